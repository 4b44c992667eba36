#!/usr/bin/env bash
# GPU test and benchmark of the CUDA kernels: builds with nvcc (no CMake, no
# other room's code but the CPU reference), checks every kernel against the
# float64 CPU reference, then times them beside the anchors (streaming
# read-only kernel, d2d copy, torch SDPA / eager MLA when python3 has torch).
#
#   tests/gpu/run.sh [--no-build] [--ncu] [--no-torch] [all|test|bench|build]
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
    all|test|bench|build) what=$a ;;
    *) echo "usage: $0 [--no-build] [--ncu] [--no-torch] [all|test|bench|build]" >&2; exit 2 ;;
  esac
done
mkdir -p "$bin" "$out"
# ATTND_GPU_TIMEOUT=s bounds each program (a hung kernel must not eat a lease)
t=()
[ "${ATTND_GPU_TIMEOUT:-0}" -gt 0 ] && t=(timeout "$ATTND_GPU_TIMEOUT")

do_build() {
  local obj=$bin/obj nvcc=${NVCC:-nvcc} cc=${CC:-gcc} pids=()
  mkdir -p "$obj"
  local inc="-I$root/include -I$root/kernels -I$root/kernels/cuda -I$root/tests/common -I$root/tests/gpu"
  local cflags="-std=c11 -O2 -D_GNU_SOURCE -Wall -Wextra -Werror $inc"
  local cuflags="-std=c++17 -O3 -D_GNU_SOURCE -Xcompiler=-Wall,-Wextra -Werror all-warnings $inc"
  for f in kernels/cpu/dtype.c kernels/cpu/layout.c kernels/cpu/ref_f64.c \
           kernels/cuda/partition.c tests/gpu/test_cuda.c tests/gpu/bench_cuda.c \
           tests/gpu/test_partition.c; do
    $cc $cflags -I/usr/local/cuda/include -c "$root/$f" -o "$obj/$(basename "$f" .c).o" & pids+=($!)
  done
  # wgmma / setmaxnreg need sm_90a; the rest is plain sm_90
  $nvcc $cuflags -gencode=arch=compute_90a,code=sm_90a -Xptxas -v -c "$root/kernels/cuda/mla_decode.cu" \
    -o "$obj/mla_decode.o" 2> "$obj/mla_decode.ptxas" & pids+=($!)
  for f in gqa_decode combine hadamard ctx plan; do
    $nvcc $cuflags -arch=sm_90 -Xptxas -v -c "$root/kernels/cuda/$f.cu" -o "$obj/$f.o" \
      2> "$obj/$f.ptxas" & pids+=($!)
  done
  $nvcc $cuflags -arch=sm_90 -c "$root/tests/gpu/bench_kernels.cu" -o "$obj/bench_kernels.o" & pids+=($!)
  local rc=0
  for p in "${pids[@]}"; do wait "$p" || rc=1; done
  if [ $rc -ne 0 ]; then cat "$obj"/*.ptxas >&2; echo "build failed" >&2; exit 1; fi
  grep -h -E "registers|spill" "$obj"/*.ptxas | sort | uniq -c | sed 's/^/  ptxas: /' || true
  local lib="$obj/ctx.o $obj/plan.o $obj/mla_decode.o $obj/gqa_decode.o $obj/combine.o \
             $obj/hadamard.o $obj/partition.o $obj/dtype.o $obj/layout.o $obj/ref_f64.o"
  $nvcc -arch=sm_90 -o "$bin/test_cuda" "$obj/test_cuda.o" $lib -lpthread -lm
  $nvcc -arch=sm_90 -o "$bin/bench_cuda" "$obj/bench_cuda.o" "$obj/bench_kernels.o" $lib -lpthread -lm
  $cc -o "$bin/test_partition" "$obj/test_partition.o" "$obj/partition.o"
  echo "built: $bin/{test_cuda,bench_cuda,test_partition}"
}

cd "$root"
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
    PYTHONUNBUFFERED=1 "${t[@]}" python3 "$root/tests/gpu/torch_anchors.py" "$out/torch.tsv" 2>&1 | tee "$out/torch.log" \
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
