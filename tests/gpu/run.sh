#!/usr/bin/env bash
# GPU test and benchmark of the CUDA kernels: builds with nvcc (no CMake, no
# other room's code but the CPU reference), checks every kernel against the
# float64 CPU reference, then times them beside the anchors (streaming
# read-only kernel, d2d copy, torch SDPA / eager MLA when python3 has torch).
#
#   tests/gpu/run.sh [--no-build] [--ncu] [--no-torch] [all|test|bench|build]
#   tests/gpu/run.sh e2e-build     (here: bundle attnd, attnd-cli, test_gpu_e2e,
#                                   test_gpu_narrow, test_gpu_sparse_engine,
#                                   test_gpu_tiers, bench_engine)
#   tests/gpu/run.sh e2e           (there: the GPU backend end to end)
#   tests/gpu/run.sh tiers         (there: test_gpu_tiers from that bundle, the
#                                   KV tiers below HBM: --kv-host, --kv-dir,
#                                   both, --durable; see below)
#   tests/gpu/run.sh engine        (there: test_gpu_e2e, then engine-level
#                                   latency without RPC)
#   tests/gpu/run.sh python-build  (here: bundle attnd and libattnd.so.0 with
#                                   their shared libraries into $ATTND_GPU_PY,
#                                   default .gpu/py)
#   tests/gpu/run.sh python-hf     (there: tests/python/test_hf.py with that
#                                   bundle: Hugging Face DeepseekV3 and Llama
#                                   decode with and without attention on attnd;
#                                   python3 there has torch and transformers.
#                                   ATTND_HF_SERVER_FLAGS adds attnd flags,
#                                   e.g. "--device cuda:0")
#   tests/gpu/run.sh sparse-build  (here: bundle attnd-sparse-bench,
#                                   attnd_cuda_test, test_gpu_sparse_engine,
#                                   test_gpu_e2e and attnd into $ATTND_GPU_SPARSE,
#                                   default .gpu/sparse; ATTND_SPARSE_BASE=PATH
#                                   adds another attnd-sparse-bench as the
#                                   baseline of the table)
#   tests/gpu/run.sh sparse        (there: the page selection against the
#                                   CPU's, a GPU engine's host selection, the
#                                   GPU end to end, then topk-pages 1/8 at 128K
#                                   against dense for llama3-8b and deepseek-v3
#                                   at batch 4 and 16 (and given-tokens of 2048
#                                   tokens a session), the baseline's run beside
#                                   each, with where each call's time went
#                                   (phases); $OUT/sparse.log)
#   tests/gpu/run.sh capture-build (here: bundle attnd-sparse-accuracy into
#                                   $ATTND_GPU_ACC, default .gpu/acc)
#   tests/gpu/run.sh capture       (there: tests/gpu/capture_attn.py: attention
#                                   captured from Hugging Face models (cached
#                                   pretrained ones, else random weights)
#                                   through that harness; the tables to
#                                   $OUT/capture.log and capture_<model>.md.
#                                   ATTND_CAPTURE_FLAGS adds script flags,
#                                   e.g. "--tokens 8192")
#
# e2e-build builds those targets in $ATTND_BUILD_DIR (default build/, a
# CMake build with CUDA) and bundles them with their shared libraries into
# $ATTND_GPU_E2E (default .gpu/e2e). e2e, on the GPU machine, runs
# test_gpu_e2e (attnd --device cuda:0 through libattnd, checked against the
# float64 reference; the narrow MLA wire too, over gRPC and UCX) and
# test_gpu_narrow (the engine's cuBLAS products of the narrow wire; both
# need libcublas.so.<major> on the loader's path: the CUDA toolkit's lib
# directory is added when found) and test_gpu_sparse_engine (a GPU
# engine's host page selection against a CPU engine's), then attnd-cli demo against `attnd --model
# deepseek-v3` on cuda:0 and on the CPU backend of the same machine, and
# prints per-layer (per Attend call) latency and the KV bandwidth it implies;
# then, like `engine`, bench_engine (attnd_engine_attend timed directly, GPU
# and CPU backends, DeepSeek-V3 shapes) beside attnd_cuda_bench's MLA
# kernel-only times and read-only anchor (from .gpu/bin) of the same run.
#
# tiers, on the GPU machine: test_gpu_tiers (attnd --device cuda:0 with a
# small HBM pool and host RAM, a disk, both (a chain), or a durable disk
# below it; every output against the float64 reference) one scenario at a
# time (CK_RUN_CASE host, disk, chain, topk, durable), each under
# ATTND_GPU_TIMEOUT seconds (default 90 here: 6 runs fit a 600 s lease
# call), so a hang in one leaves the others' verdicts; then the same
# suite on the CPU backend of that machine (ATTND_GPU_TIERS_DEVICE=cpu), to
# tell a GPU path's failure from the machine's (io_uring, O_DIRECT, disk).
# Everything goes to $OUT/tiers.log, the verdicts to $OUT/tiers_summary.txt.
# Exit status: 0 when every GPU scenario passed, 77 without a GPU, else 1.
#
# Binaries go to $ATTND_GPU_BIN (default .gpu/bin, git-ignored: carry it to
# the GPU machine and pass --no-build there to skip the compile). Logs and
# the final table go to $OUT (the device tool's output folder) when set, else
# .gpu/out. Exit status: that of the correctness test (77 = no GPU: skipped).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${ATTND_GPU_BIN:-$root/.gpu/bin}
out=${OUT:-$root/.gpu/out}
build=1 ncu=0 torch=1 what=all
for a in "$@"; do
  case $a in
    --no-build) build=0 ;;
    --ncu) ncu=1 ;;
    --no-torch) torch=0 ;;
    all|test|bench|build|e2e|e2e-build|engine|e2e-bench|e2e-group|tiers|python-build|python-hf|capture-build|capture|sparse-build|sparse) what=$a ;;
    *) echo "usage: $0 [--no-build] [--ncu] [--no-torch] [all|test|bench|build|e2e|e2e-build|engine|e2e-bench|e2e-group|tiers|python-build|python-hf|capture-build|capture|sparse-build|sparse]" >&2; exit 2 ;;
  esac
done
mkdir -p "$bin" "$out"
# ATTND_GPU_TIMEOUT=s bounds each program (a hung kernel must not eat a lease)
t=()
[ "${ATTND_GPU_TIMEOUT:-0}" -gt 0 ] && t=(timeout "$ATTND_GPU_TIMEOUT")

do_build() {
  local obj=$bin/obj nvcc=${NVCC:-nvcc} cc=${CC:-gcc} pids=()
  mkdir -p "$obj"
  local inc="-I$root/common -I$root/kernels/include -I$root/kernels/cuda -I$root/kernels/cuda/bench -I$root/tests/common -I$root/tests/gpu"
  local cflags="-std=c11 -O2 -D_GNU_SOURCE -Wall -Wextra -Werror $inc"
  local cuflags="-std=c++17 -O3 -D_GNU_SOURCE -Xcompiler=-Wall,-Wextra -Werror all-warnings $inc"
  # the CPU kernels whole: test_cuda checks the GPU's page selection
  # against attnd_kernel_select (its SIMD paths as CMake compiles them)
  local cpu=() f fl
  for f in "$root"/kernels/cpu/*.c; do cpu+=("kernels/cpu/$(basename "$f")"); done
  for f in common/dtype.c common/buf.c "${cpu[@]}" \
           kernels/cuda/partition.c tests/gpu/test_cuda.c kernels/cuda/bench/bench_cuda.c \
           tests/gpu/test_partition.c; do
    case $f in
      */simd_avx2.c|*/select_avx2.c|*/proj_avx2.c) fl="-mavx2 -mfma -mf16c -DATTND_HAVE_X86_SIMD=1" ;;
      */simd_avx512.c|*/select_avx512.c|*/proj_avx512.c)
        fl="-mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx2 -mfma -mf16c -DATTND_HAVE_X86_SIMD=1" ;;
      */simd_avx512bf16.c)
        fl="-mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512bf16 -mavx2 -mfma -mf16c -DATTND_HAVE_X86_SIMD=1" ;;
      kernels/cpu/*) fl="-DATTND_HAVE_X86_SIMD=1" ;;
      *) fl="" ;;
    esac
    # cpu_ prefix: kernels/cpu/plan.c and select.c share names with cuda/*.cu
    local o; o=$(basename "$f" .c); [[ $f == kernels/cpu/* ]] && o=cpu_$o
    $cc $cflags $fl -I/usr/local/cuda/include -c "$root/$f" -o "$obj/$o.o" & pids+=($!)
  done
  # wgmma / setmaxnreg need sm_90a; the rest is plain sm_90
  $nvcc $cuflags -gencode=arch=compute_90a,code=sm_90a -Xptxas -v -c "$root/kernels/cuda/mla_decode.cu" \
    -o "$obj/mla_decode.o" 2> "$obj/mla_decode.ptxas" & pids+=($!)
  for f in gqa_decode combine hadamard ctx plan select select_mma scatter gather bounds8; do
    $nvcc $cuflags -arch=sm_90 -Xptxas -v -c "$root/kernels/cuda/$f.cu" -o "$obj/$f.o" \
      2> "$obj/$f.ptxas" & pids+=($!)
  done
  $nvcc $cuflags -arch=sm_90 -c "$root/kernels/cuda/bench/bench_kernels.cu" -o "$obj/bench_kernels.o" & pids+=($!)
  local rc=0
  for p in "${pids[@]}"; do wait "$p" || rc=1; done
  if [ $rc -ne 0 ]; then cat "$obj"/*.ptxas >&2; echo "build failed" >&2; exit 1; fi
  grep -h -E "registers|spill" "$obj"/*.ptxas | sort | uniq -c | sed 's/^/  ptxas: /' || true
  local lib="$obj/ctx.o $obj/plan.o $obj/mla_decode.o $obj/gqa_decode.o $obj/combine.o \
             $obj/hadamard.o $obj/select.o $obj/select_mma.o $obj/scatter.o $obj/gather.o $obj/bounds8.o $obj/partition.o \
             $obj/dtype.o $obj/buf.o"
  for f in "${cpu[@]}"; do lib+=" $obj/cpu_$(basename "$f" .c).o"; done
  $nvcc -arch=sm_90 -o "$bin/test_cuda" "$obj/test_cuda.o" $lib -lpthread -lm
  $nvcc -arch=sm_90 -o "$bin/bench_cuda" "$obj/bench_cuda.o" "$obj/bench_kernels.o" $lib -lpthread -lm
  $cc -o "$bin/test_partition" "$obj/test_partition.o" "$obj/partition.o" "$obj/buf.o"
  echo "built: $bin/{test_cuda,bench_cuda,test_partition}"
}

e2e=${ATTND_GPU_E2E:-$root/.gpu/e2e}
rc=0

do_e2e_build() {
  local b=${ATTND_BUILD_DIR:-$root/build}
  cmake --build "$b" -j2 --target attnd attnd-cli attnd-bench test_gpu_e2e test_gpu_narrow \
    test_gpu_sparse_engine test_gpu_tiers bench_engine
  rm -rf "$e2e"
  "${ATTND_BUNDLE:-$root/../shared/tools/bundle-for-gpu.sh}" "$e2e" "$b/service/attnd" \
    "$b/client/cli/attnd-cli" "$b/client/bench/attnd-bench" "$b/tests/gpu/test_gpu_e2e" \
    "$b/tests/gpu/test_gpu_narrow" "$b/tests/gpu/test_gpu_sparse_engine" \
    "$b/tests/gpu/test_gpu_tiers" "$b/worker/bench_engine"
  # test_gpu_e2e starts the attnd path compiled into it: remember it
  realpath "$b/service/attnd" > "$e2e/attnd_path"
  echo "bundled: $e2e"
}

# One attnd + attnd-cli demo: $1 label, $2 device, then demo flags.
e2e_demo() {
  local label=$1 dev=$2; shift 2
  local pf=$out/port.$label log=$out/demo.$label.log
  rm -f "$pf"
  "$e2e/run" attnd --model deepseek-v3 --device "$dev" --kv-memory 8G --listen 127.0.0.1:0 \
    --port-file "$pf" > "$out/attnd.$label.log" 2>&1 & local spid=$!
  for _ in $(seq 600); do [ -s "$pf" ] || ! kill -0 $spid 2>/dev/null && break; sleep 0.1; done
  if [ ! -s "$pf" ]; then echo "$label: attnd did not start"; cat "$out/attnd.$label.log"; return 1; fi
  local t0; t0=$(date +%s)
  "${t[@]}" "$e2e/run" attnd-cli --target "127.0.0.1:$(cat "$pf")" demo "$@" > "$log" 2>&1
  local drc=$?
  echo "$label: demo exit $drc ($(( $(date +%s) - t0 )) s)"
  "$e2e/run" attnd-cli --target "127.0.0.1:$(cat "$pf")" stats >> "$log" 2>&1 || true
  kill -TERM $spid; wait $spid || true
  { echo "-- attnd:"; cat "$out/attnd.$label.log"; } >> "$log"
  rm -f "$pf" "$out/attnd.$label.log"  # $OUT brings back at most 8 files
  cat "$log"
  return $drc
}

# Per-layer latency and KV bandwidth from a demo log: $1 label, $2 batch,
# $3 context (prefill tokens). KV bytes per Attend: batch x context x 1152
# (576 bf16 per token of a layer).
e2e_row() {
  awk -v l="$1" -v b="$2" -v c="$3" '/latency per Attend/ {
      p50 = $6; p90 = $8; kv = b * c * 1152;
      printf "| %s | %d x %d | %.0f | %.0f | %.1f | %.2f |\n", l, b, c, p50, p90, kv / 1e6, kv / p50 / 1e3 }
    /max relative error/ { print "  check:", $0 }' "$out/demo.$1.log"
}

# test_gpu_e2e from the bundle; sets rc (77: no GPU, exits).
e2e_test() {
  [ -x "$e2e/run" ] || { echo "no bundle at $e2e (run e2e-build first)"; exit 2; }
  local ap; ap=$(cat "$e2e/attnd_path")
  # the narrow wire's products dlopen cuBLAS (not bundled: ~600 MB)
  local cl
  for cl in /usr/local/cuda/lib64 /usr/local/cuda/targets/*/lib; do
    if ls "$cl"/libcublas.so.* > /dev/null 2>&1; then
      export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$cl"
      break
    fi
  done
  if [ ! -x "$ap" ]; then mkdir -p "$(dirname "$ap")"; ln -sf "$e2e/bin/attnd" "$ap"; fi
  set +e
  echo "== test_gpu_e2e"
  "${t[@]}" "$e2e/run" test_gpu_e2e 2>&1 | tee "$out/e2e_test.log"
  rc=${PIPESTATUS[0]}
  [ $rc -eq 77 ] && { set -e; echo "no GPU: skipped"; exit 77; }
  echo "== test_gpu_narrow (the narrow MLA wire's cuBLAS products)"
  "${t[@]}" "$e2e/run" test_gpu_narrow 2>&1 | tee -a "$out/e2e_test.log"
  local nrc=${PIPESTATUS[0]}
  [ $rc -eq 0 ] && rc=$nrc
  echo "== test_gpu_sparse_engine (a GPU engine's host page selection)"
  "${t[@]}" "$e2e/run" test_gpu_sparse_engine 2>&1 | tee -a "$out/e2e_test.log"
  nrc=${PIPESTATUS[0]}
  [ $rc -eq 0 ] && rc=$nrc
  set -e
  return 0
}

do_e2e() {
  e2e_test
  set +e
  echo "== demo: deepseek-v3, 16 sessions x 4096 tokens, 3 steps x 61 layers"
  local ctx=${ATTND_E2E_CTX:-4096} steps=${ATTND_E2E_STEPS:-3}
  e2e_demo gpu_b16 cuda:0 --sessions 16 --prefill "$ctx" --steps "$steps" --batch 16 --seed 7
  e2e_demo gpu_b4 cuda:0 --sessions 16 --prefill "$ctx" --steps "$steps" --batch 4 --seed 7
  e2e_demo gpu_b4_async cuda:0 --sessions 16 --prefill "$ctx" --steps "$steps" --batch 4 --api async --seed 7
  e2e_demo cpu_b16 cpu --sessions 16 --prefill "$ctx" --steps "$steps" --batch 16 --seed 7
  set -e
  { echo "| run | batch x context | p50 us per layer | p90 us | KV MB per call | KV GB/s at p50 |"
    echo "| --- | --- | ---: | ---: | ---: | ---: |"
    e2e_row gpu_b16 16 "$ctx"; e2e_row gpu_b4 4 "$ctx"; e2e_row gpu_b4_async 4 "$ctx"
    e2e_row cpu_b16 16 "$ctx"; } | tee "$out/e2e_table.md"
  do_engine
  exit $rc
}

# attnd on the GPU serving attnd-bench over gRPC and over UCX (same server,
# DeepSeek-V3, sessions of ATTND_E2E_CTX tokens): per-layer Attend latency
# with the server's split, so the transport's share shows.
do_e2e_bench() {
  [ -x "$e2e/run" ] || { echo "no bundle at $e2e (run e2e-build first)"; exit 2; }
  local ctx=${ATTND_E2E_CTX:-4096} pf=$out/port.bench
  rm -f "$pf"
  "$e2e/run" attnd --model deepseek-v3 --device cuda:0 --kv-memory 24G --listen 127.0.0.1:0 \
    --ucx-listen auto --port-file "$pf" > "$out/attnd.bench.log" 2>&1 & local spid=$!
  for _ in $(seq 600); do [ -s "$pf" ] || ! kill -0 $spid 2>/dev/null && break; sleep 0.1; done
  [ -s "$pf" ] || { echo "attnd did not start"; cat "$out/attnd.bench.log"; exit 1; }
  set +e
  for tb in ${ATTND_E2E_RUNS:-grpc:16 ucx:16 grpc:4 ucx:4}; do
    local tr=${tb%%:*} b=${tb##*:}
    echo "== attnd-bench --transport $tr --batch $b (deepseek-v3 on cuda:0, ${ctx}-token sessions)"
    "${t[@]}" "$e2e/run" attnd-bench --target "127.0.0.1:$(cat "$pf")" --transport "$tr" \
      --sessions $((2 * b)) --batch "$b" --prompt-len "$ctx" --duration 4s --warmup 1s \
      --seed 7 --no-progress 2>&1 | tee -a "$out/e2e_bench.log"
  done
  kill -TERM $spid; wait $spid
  echo "attnd exit $?"; tail -3 "$out/attnd.bench.log"
  set -e
}

# Two ranks of one worker group on this machine's GPU (both --device
# cuda:0), sequence sharding over UCX, driven by attnd-cli demo with every
# output checked against the float64 reference: GPU ranks combine like CPU
# ranks.
do_e2e_group() {
  [ -x "$e2e/run" ] || { echo "no bundle at $e2e (run e2e-build first)"; exit 2; }
  local gd=$out/groupdir pids=() rc2=0
  mkdir -p "$gd"
  for r in 0 1; do
    rm -f "$out/port.g$r"
    "$e2e/run" attnd --model deepseek-v3 --device "${ATTND_E2E_DEVICE:-cuda:0}" --kv-memory 8G \
      --listen 127.0.0.1:0 --port-file "$out/port.g$r" --rank $r --group 127.0.0.1:0,127.0.0.1:0 --group-dir "$gd" \
      --shard "${ATTND_E2E_SHARD:-sequence}" > "$out/attnd.g$r.log" 2>&1 & pids+=($!)
  done
  for r in 0 1; do
    for _ in $(seq 600); do [ -s "$out/port.g$r" ] && break; sleep 0.1; done
  done
  set +e
  "${t[@]}" "$e2e/run" attnd-cli --target "127.0.0.1:$(cat "$out/port.g1")" stats 2>&1 | grep -i group
  "${t[@]}" "$e2e/run" attnd-cli --target "127.0.0.1:$(cat "$out/port.g0")" demo --sessions 8 \
    --prefill "${ATTND_E2E_CTX:-4096}" --steps 3 --batch 8 --seed 7 2>&1 | tail -6
  rc2=${PIPESTATUS[0]}
  kill -TERM "${pids[@]}"; wait "${pids[@]}"
  echo "demo exit $rc2; ranks exit $?"
  for r in 0 1; do tail -n 2 "$out/attnd.g$r.log"; done
  set -e
}

do_engine() {
  set +e
  echo "== engine: attnd_engine_attend without RPC (deepseek-v3, one layer)"
  "${t[@]}" "$e2e/run" bench_engine --ctx "${ATTND_E2E_CTX:-4096}" --batches 1,16,64,128 \
    2>&1 | tee "$out/engine.md"
  if [ -x "$bin/bench_cuda" ]; then
    echo "== kernel only (same run): attnd_cuda_bench mla"
    "${t[@]}" "$bin/bench_cuda" mla 2>&1 | grep -E "anchor|^mla" | tee "$out/engine_kernels.log"
  fi
  set -e
}

# test_gpu_tiers from the bundle, one scenario (Check TCase) at a time, then
# the same suite on the CPU backend; sets rc (77: no GPU, exits).
do_tiers() {
  [ -x "$e2e/run" ] || { echo "no bundle at $e2e (run e2e-build first)"; exit 2; }
  [ -x "$e2e/bin/test_gpu_tiers" ] || { echo "$e2e has no test_gpu_tiers (run e2e-build again)"; exit 2; }
  local ap log=$out/tiers.log sum=$out/tiers_summary.txt c crc
  ap=$(cat "$e2e/attnd_path")
  if [ ! -x "$ap" ]; then mkdir -p "$(dirname "$ap")"; ln -sf "$e2e/bin/attnd" "$ap"; fi
  local tt=(timeout "${ATTND_GPU_TIMEOUT:-90}")
  [ "${ATTND_GPU_TIMEOUT:-90}" -gt 0 ] || tt=()
  export UCX_MEM_MALLOC_HOOKS=no UCX_MEM_MMAP_HOOK_MODE=none ATTND_KERNEL_PATH=exact
  { echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"; echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo none)"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || true
    echo "/tmp (the tests' --kv-dir): $(df -hT /tmp | tail -1)"; ulimit -l | sed 's/^/memlock: /'; } | tee "$log" > "$sum"
  set +e
  rc=0
  for c in host disk chain topk durable; do
    echo "== test_gpu_tiers: $c (${ATTND_GPU_TIERS_DEVICE:-cuda:0})" | tee -a "$log"
    CK_RUN_CASE=$c "${tt[@]}" "$e2e/run" test_gpu_tiers >> "$log" 2>&1
    crc=$?
    [ $crc -eq 77 ] && { echo "no GPU: skipped" | tee -a "$log" "$sum"; set -e; exit 77; }
    echo "$c: exit $crc$([ $crc -eq 124 ] && echo ' (timed out)')" | tee -a "$log" "$sum"
    grep -E ':[PFE]:' "$log" | grep -F ":$c:" | sed 's/^.*test_gpu_tiers\.c:[0-9]*://' >> "$sum"
    [ $crc -ne 0 ] && rc=1
  done
  echo "== test_gpu_tiers on the CPU backend (the same checks, not the GPU paths; host is skipped there)" | tee -a "$log"
  ATTND_GPU_TIERS_DEVICE=cpu "${tt[@]}" "$e2e/run" test_gpu_tiers > "$out/tiers_cpu.tmp" 2>&1
  crc=$?
  cat "$out/tiers_cpu.tmp" >> "$log"
  { echo "cpu: exit $crc"; grep -E ':[PFE]:' "$out/tiers_cpu.tmp" | sed 's/^.*test_gpu_tiers\.c:[0-9]*://'; } >> "$sum"
  rm -f "$out/tiers_cpu.tmp"
  set -e
  echo "-- summary ($sum):"; cat "$sum"
}

# The Python binding's transformers test (tests/python/test_hf.py): attnd
# and libattnd travel as a bundle; the test starts its own servers.
pyb=${ATTND_GPU_PY:-$root/.gpu/py}

do_python_build() {
  local b=${ATTND_BUILD_DIR:-$root/build} lib=
  cmake --build "$b" -j2 --target attnd attnd_client
  for cand in "$b/client/lib/libattnd.so.0" "$b/client/libattnd.so.0"; do
    [ -e "$cand" ] && { lib=$cand; break; }
  done
  [ -n "$lib" ] || { echo "no libattnd.so.0 under $b" >&2; exit 1; }
  rm -rf "$pyb"
  "${ATTND_BUNDLE:-$root/../shared/tools/bundle-for-gpu.sh}" "$pyb" "$b/service/attnd" "$lib"
  echo "bundled: $pyb"
}

do_python_hf() {
  [ -x "$pyb/run" ] || { echo "no bundle at $pyb (run python-build first)"; exit 2; }
  python3 -c 'import torch, transformers, numpy' || { echo "python3 lacks torch/transformers/numpy"; exit 77; }
  set +e
  LD_LIBRARY_PATH="$pyb/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ATTND_BIN="$pyb/bin/attnd" \
    ATTND_LIB="$pyb/bin/libattnd.so.0" PYTHONPATH="$root/client/python" PYTHONDONTWRITEBYTECODE=1 \
    UCX_MEM_MALLOC_HOOKS=no UCX_MEM_MMAP_HOOK_MODE=none \
    "${t[@]}" python3 "$root/tests/python/test_hf.py" 2>&1 | tee "$out/python_hf.log"
  local prc=${PIPESTATUS[0]}
  set -e
  exit "$prc"
}

# The accuracy harness on captured attention (tests/gpu/capture_attn.py):
# attnd-sparse-accuracy travels as a bundle, the script runs it per model.
acc=${ATTND_GPU_ACC:-$root/.gpu/acc}

do_capture_build() {
  local b=${ATTND_BUILD_DIR:-$root/build}
  cmake --build "$b" -j2 --target attnd-sparse-accuracy
  rm -rf "$acc"
  "${ATTND_BUNDLE:-$root/../shared/tools/bundle-for-gpu.sh}" "$acc" "$b/worker/attnd-sparse-accuracy"
  echo "bundled: $acc"
}

do_capture() {
  [ -x "$acc/run" ] || { echo "no bundle at $acc (run capture-build first)"; exit 2; }
  python3 -c 'import torch, transformers, numpy' || { echo "python3 lacks torch/transformers/numpy"; exit 77; }
  set +e
  # shellcheck disable=SC2086  # flags split on purpose
  PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 OUT="$out" "${t[@]}" python3 "$root/tests/gpu/capture_attn.py" \
    --harness "$acc/run attnd-sparse-accuracy" ${ATTND_CAPTURE_FLAGS:-} 2>&1 | tee "$out/capture.log"
  local crc=${PIPESTATUS[0]}
  set -e
  exit "$crc"
}

sparse=${ATTND_GPU_SPARSE:-$root/.gpu/sparse}

do_sparse_build() {
  local b=${ATTND_BUILD_DIR:-$root/build} extra=()
  cmake --build "$b" -j2 --target attnd attnd-sparse-bench attnd_cuda_test test_gpu_sparse_engine \
    test_gpu_e2e
  rm -rf "$sparse"
  if [ -n "${ATTND_SPARSE_BASE:-}" ]; then  # bundled under its own name
    mkdir -p "$out/base" && cp "$ATTND_SPARSE_BASE" "$out/base/attnd-sparse-bench-base"
    extra=("$out/base/attnd-sparse-bench-base")
  fi
  "${ATTND_BUNDLE:-$root/../shared/tools/bundle-for-gpu.sh}" "$sparse" "$b/service/attnd" \
    "$b/worker/attnd-sparse-bench" "$b/kernels/cuda/attnd_cuda_test" \
    "$b/tests/gpu/test_gpu_sparse_engine" "$b/tests/gpu/test_gpu_e2e" "${extra[@]}"
  realpath "$b/service/attnd" > "$sparse/attnd_path"  # test_gpu_e2e starts it
  echo "bundled: $sparse"
}

do_sparse() {
  [ -x "$sparse/run" ] || { echo "no bundle at $sparse (run sparse-build first)"; exit 2; }
  local ap m bt v bins=(attnd-sparse-bench) log=$out/sparse.log src=0
  ap=$(cat "$sparse/attnd_path")
  if [ ! -x "$ap" ]; then mkdir -p "$(dirname "$ap")"; ln -sf "$sparse/bin/attnd" "$ap"; fi
  [ -x "$sparse/bin/attnd-sparse-bench-base" ] && bins=(attnd-sparse-bench-base attnd-sparse-bench)
  set +e
  { nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null || true; } | tee "$log"
  echo "== attnd_cuda_test select" | tee -a "$log"
  "${t[@]}" "$sparse/run" attnd_cuda_test select 2>&1 | tee -a "$log" | grep -v '^PASS'
  rc=${PIPESTATUS[0]}
  [ $rc -eq 77 ] && { set -e; echo "no GPU: skipped"; exit 77; }
  echo "== attnd_cuda_test misc (the append scatter among them)" | tee -a "$log"
  "${t[@]}" "$sparse/run" attnd_cuda_test misc 2>&1 | tee -a "$log" | grep -v '^PASS'
  src=${PIPESTATUS[0]}
  [ $rc -eq 0 ] && rc=$src
  for v in test_gpu_sparse_engine test_gpu_e2e; do
    echo "== $v" | tee -a "$log"
    "${t[@]}" "$sparse/run" "$v" 2>&1 | tee -a "$log" | grep -E 'Checks|FAIL|lists'
    src=${PIPESTATUS[0]}
    [ $rc -eq 0 ] && rc=$src
  done
  for m in llama3-8b deepseek-v3; do
    for bt in 4 16; do
      for v in "${bins[@]}"; do  # the baseline first, then this tree's
        echo "== $v $m batch $bt" | tee -a "$log"
        "${t[@]}" "$sparse/run" "$v" --model "$m" --ctx 131072 --batch "$bt" --budget 0.125 \
          --iters 30 --device cuda:0 2>&1 | tee -a "$log" | grep -E 'dense |sparse |speedup|selection|phases'
      done
      echo "== attnd-sparse-bench $m batch $bt --policy given-tokens --topk 2048" | tee -a "$log"
      "${t[@]}" "$sparse/run" attnd-sparse-bench --model "$m" --ctx 131072 --batch "$bt" \
        --policy given-tokens --topk 2048 --iters 30 --device cuda:0 2>&1 | tee -a "$log" |
        grep -E 'dense |sparse |speedup|phases'
      if [ "$m" = deepseek-v3 ]; then  # the narrow wire's form (this tree's)
        echo "== attnd-sparse-bench $m batch $bt --q-form heads" | tee -a "$log"
        "${t[@]}" "$sparse/run" attnd-sparse-bench --model "$m" --ctx 131072 --batch "$bt" \
          --budget 0.125 --iters 30 --device cuda:0 --q-form heads 2>&1 | tee -a "$log" |
          grep -E 'dense |sparse |speedup|selection|phases'
      fi
    done
  done
  set -e
  exit $rc
}

cd "$root"
if [ "$what" = sparse-build ]; then do_sparse_build; exit 0; fi
if [ "$what" = sparse ]; then do_sparse; fi
if [ "$what" = capture-build ]; then do_capture_build; exit 0; fi
if [ "$what" = capture ]; then do_capture; fi
if [ "$what" = python-build ]; then do_python_build; exit 0; fi
if [ "$what" = python-hf ]; then do_python_hf; fi
if [ "$what" = e2e-build ]; then do_e2e_build; exit 0; fi
if [ "$what" = e2e ]; then do_e2e; fi
if [ "$what" = engine ]; then e2e_test; do_engine; exit $rc; fi
if [ "$what" = e2e-bench ]; then do_e2e_bench; exit 0; fi
if [ "$what" = e2e-group ]; then do_e2e_group; exit 0; fi
if [ "$what" = tiers ]; then do_tiers; exit $rc; fi
if [ $build -eq 1 ]; then do_build; fi
[ "$what" = build ] && exit 0

{ echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"; echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo none)";
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem --format=csv 2>/dev/null || true; } | tee "$out/env.txt"

if command -v cuobjdump >/dev/null && [ -d "$bin/obj" ]; then  # what the compiler made of the kernels
  for o in mla_decode gqa_decode; do
    cuobjdump -sass "$bin/obj/$o.o" | awk -v o=$o '/Function :/ {f=$3} /HGMMA/ {h[f]++} /HMMA/ {m[f]++}
      /STL|LDL/ {l[f]++} /UTMALDG/ {t[f]++} END {for (k in h) printf "sass %s %s: HGMMA %d\n", o, k, h[k];
      for (k in m) printf "sass %s %s: HMMA %d\n", o, k, m[k]; for (k in l) printf "sass %s %s: local ld/st %d\n", o, k, l[k];
      for (k in t) printf "sass %s %s: UTMALDG %d\n", o, k, t[k]}' | sed 's/_ZN[^ ]*decode_kernel/K/' | tee -a "$out/env.txt"
  done
fi
"$bin/test_partition" || echo "test_partition FAILED"
rc=0
if [ "$what" = all ] || [ "$what" = test ]; then
  set +e
  "${t[@]}" "$bin/test_cuda" 2>&1 | tee "$out/test.log"
  rc=${PIPESTATUS[0]}
  set -e
  [ $rc -eq 77 ] && { echo "no GPU: skipped"; exit 77; }
  [ $rc -eq 124 ] && { echo "test_cuda timed out: no benchmark"; exit 124; }
fi
if [ "$what" = all ] || [ "$what" = bench ]; then
  torch_tsv= dmon=
  if command -v nvidia-smi >/dev/null; then  # clocks and power beside the timings
    nvidia-smi dmon -s pc -d 1 > "$out/dmon.log" 2>&1 & dmon=$!
  fi
  if [ $torch -eq 1 ] && python3 -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null; then
    PYTHONUNBUFFERED=1 "${t[@]}" python3 "$root/kernels/cuda/bench/torch_anchors.py" "$out/torch.tsv" 2>&1 | tee "$out/torch.log" \
      && torch_tsv="--torch $out/torch.tsv" || echo "torch anchors failed"
  else
    echo "python3 has no CUDA torch: no torch anchors"
  fi
  "${t[@]}" "$bin/bench_cuda" $torch_tsv 2>&1 | tee "$out/bench.log" || true
  [ -n "$dmon" ] && kill "$dmon" 2>/dev/null || true
  if [ $ncu -eq 1 ] && command -v ncu >/dev/null; then
    # one memory-bound and one compute-bound MLA shape, two GQA shapes
    for s in ${ATTND_NCU_SHAPES:-0 5}; do
      "${t[@]}" ncu --clock-control none --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section SchedulerStats --section Occupancy -k regex:decode_kernel -s 20 -c 1 \
        "$bin/bench_cuda" --no-anchors $s >> "$out/ncu.log" 2>&1 || echo "ncu failed (see ncu.log)"
    done
  fi
fi
grep -E "^(FAIL|test_cuda:)" "$out/test.log" 2>/dev/null || true
exit $rc
