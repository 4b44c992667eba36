#!/usr/bin/env bash
# The KV tiers' benchmark (worker/TIERS.md, "Benchmark"): spill and reload
# throughput beside fio with the same pattern and directory, decode latency
# from memory and from disk (prefetch on/off), the resident hot path with
# and without a tier, and AppendKV / Attend latency with --durable off, sync
# and batch (one after the other, and three workers at once, their calls
# interleaved). Rounds alternate the compared runs; medians are printed.
#
#   worker/bench/tiers_bench.sh BUILD_DIR DIR [ROUNDS]
#
# BUILD_DIR: a build with attnd, attnd-bench and attnd-tier-bench; DIR: a
# directory on the disk to measure (emptied). Needs fio and python3.
# TIERS_BENCH_ONLY="1 4" runs only those sections (6 needs attnd-append-ab).
set -euo pipefail

build=${1:?usage: tiers_bench.sh BUILD_DIR DIR [ROUNDS]}
dir=${2:?usage: tiers_bench.sh BUILD_DIR DIR [ROUNDS]}
rounds=${3:-3}
tb=$build/worker/attnd-tier-bench
attnd=$build/service/attnd
bench=$build/client/bench/attnd-bench
ab=$build/client/bench/attnd-append-ab
command -v fio >/dev/null || { echo "tiers_bench: fio is needed (apt-get install fio)" >&2; exit 3; }
for p in "$tb" "$attnd" "$bench"; do [ -x "$p" ] || { echo "tiers_bench: no $p" >&2; exit 3; }; done
mkdir -p "$dir"
out=$(mktemp -d)
trap 'rm -rf "$out"; rm -rf "$dir"/fio.dat "$dir"/kv "$dir"/kv-off "$dir"/kv-sync "$dir"/kv-batch "$dir"/tb' EXIT

only="${TIERS_BENCH_ONLY:-1 2 3 4 5 6}"
run() { case " $only " in *" $1 "*) return 0 ;; esac; return 1; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
echo "tiers_bench: $(date -u +%F), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg), dir $dir ($(stat -f -c %T "$dir"))"

# ---- 1. spill / reload vs fio ---------------------------------------------------
if run 1; then
depth=32
slot=$(rm -rf "$dir/tb"; mkdir -p "$dir/tb"; "$tb" io --dir "$dir/tb" --mib 64 --reps 1 | sed -n 's/^json .*"slot_bytes": \([0-9]*\).*/\1/p')
for r in $(seq "$rounds"); do
  for rw in write read; do
    extra=""; [ $rw = write ] && extra="--overwrite=1"
    fio --name=t --directory="$dir" --filename=fio.dat --rw=$rw --bs="$slot" --iodepth=$depth \
        --ioengine=io_uring --direct=1 --size=1G --registerfiles --fixedbufs $extra \
        --output-format=json 2>/dev/null |
      python3 -c "import json,sys; j=json.load(sys.stdin)['jobs'][0]['$rw']; print(j['bw']*1024/1e6)" \
        >> "$out/fio_$rw"
  done
  rm -rf "$dir/tb"; mkdir -p "$dir/tb"
  "$tb" io --dir "$dir/tb" --mib 1024 --reps 1 --depth $depth | tee -a "$out/io.log" |
    sed -n 's/^json .*"spill_mb_s": \([0-9.]*\), "reload_mb_s": \([0-9.]*\).*/\1 \2/p' >> "$out/io"
done
fw=$(median < "$out/fio_write"); fr=$(median < "$out/fio_read")
sw=$(cut -d' ' -f1 "$out/io" | median); sr=$(cut -d' ' -f2 "$out/io" | median)
echo
echo "== spill / reload, block $slot bytes, depth $depth, 1 GiB, median of $rounds"
printf "  fio write %7.0f MB/s   spill  %7.0f MB/s   %5.1f%% of fio\n" "$fw" "$sw" "$(awk -v a="$sw" -v b="$fw" 'BEGIN {print 100*a/b}')"
printf "  fio read  %7.0f MB/s   reload %7.0f MB/s   %5.1f%% of fio\n" "$fr" "$sr" "$(awk -v a="$sr" -v b="$fr" 'BEGIN {print 100*a/b}')"
rm -f "$dir/fio.dat"
fi

# ---- 2. decode from disk --------------------------------------------------------
if run 2; then
echo
echo "== decode, llama3-8b, sessions of 4096 tokens (attnd-tier-bench attend)"
rm -rf "$dir/tb"; mkdir -p "$dir/tb"
"$tb" attend --dir "$dir/tb" --tokens 4096 --steps 5 | sed 's/^/  /'
fi

# ---- 3. the hot path ------------------------------------------------------------
if run 3; then
echo
echo "== resident Attend with and without a tier (attnd-tier-bench hot)"
for r in $(seq "$rounds"); do
  rm -rf "$dir/tb"; mkdir -p "$dir/tb"
  "$tb" hot --dir "$dir/tb" --tokens 1024 --batch 4 --iters 300 | sed -n 's/.*ratio \([0-9.]*\).*/\1/p' >> "$out/hot"
done
echo "  ratio tier / no tier, per-layer p50: median $(median < "$out/hot") of $rounds rounds ($(tr '\n' ' ' < "$out/hot"))"
fi

# ---- 4. durability --------------------------------------------------------------
if run 4; then
echo
echo "== AppendKV and Attend latency by --durable (attnd-bench, llama3-8b: 8 sessions, an AppendKV of 64 tokens per layer and session, then decode in batches of 4)"
for r in $(seq "$rounds"); do
  for mode in off sync batch; do
    rm -rf "$dir/kv"
    pf=$(mktemp -u)
    "$attnd" --model llama3-8b --listen 127.0.0.1:0 --port-file "$pf" --kv-memory 2Gi \
      --kv-dir "$dir/kv" --durable=$mode --durable-window-ms 1 > "$out/attnd.log" 2>&1 &
    pid=$!
    for i in $(seq 300); do [ -s "$pf" ] && break; sleep 0.1; done
    "$bench" --target "127.0.0.1:$(cat "$pf")" --model llama3-8b --sessions 8 --batch 4 \
      --prompt-len 64 --chunk 64 --duration 4 --warmup 1 --no-progress --json "$out/b.json" > /dev/null
    python3 - "$out/b.json" "$mode" >> "$out/dur" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
a = j["prefill"]["call_latency_ms"]; d = j["decode"]["call_latency_ms"]
print(sys.argv[2], a["p50"], a["p99"], d["p50"], d["p99"])
PY
    kill $pid; wait $pid || true; rm -f "$pf"
  done
done
for mode in off sync batch; do
  ap=$(awk -v m=$mode '$1==m {print $2}' "$out/dur" | median)
  a9=$(awk -v m=$mode '$1==m {print $3}' "$out/dur" | median)
  dp=$(awk -v m=$mode '$1==m {print $4}' "$out/dur" | median)
  d9=$(awk -v m=$mode '$1==m {print $5}' "$out/dur" | median)
  printf "  %-6s AppendKV p50 %7.3f ms  p99 %7.3f ms   Attend (with new KV) p50 %7.3f ms  p99 %7.3f ms\n" "$mode" "$ap" "$a9" "$dp" "$d9"
done
fi

# ---- 5. the log's cost inside the engine ----------------------------------------
if run 5; then
echo
echo "== engine-level appends by --durable (attnd-tier-bench append, llama3-8b)"
for tok in 64 1; do
  rm -rf "$dir/tb"; mkdir -p "$dir/tb"
  "$tb" append --dir "$dir/tb" --tokens $tok --iters 400 2>/dev/null | sed 's/^/  /'
done
fi

# ---- 6. AppendKV by --durable, interleaved ----------------------------------------
if run 6; then
[ -x "$ab" ] || { echo "tiers_bench: no $ab" >&2; exit 3; }
echo
echo "== AppendKV latency by --durable, three workers at once, one call to each in turn (attnd-append-ab: 64 tokens a call, 256 calls to each a round)"
pids=(); targets=()
for mode in off sync batch; do
  rm -rf "$dir/kv-$mode"
  pf=$(mktemp -u)
  "$attnd" --model llama3-8b --listen 127.0.0.1:0 --port-file "$pf" --kv-memory 1Gi \
    --kv-dir "$dir/kv-$mode" --durable=$mode --durable-window-ms 1 > "$out/attnd-$mode.log" 2>&1 &
  pids+=($!)
  for i in $(seq 300); do [ -s "$pf" ] && break; sleep 0.1; done
  targets+=("127.0.0.1:$(cat "$pf")"); rm -f "$pf"
done
"$ab" 256 64 16 "${targets[@]}" > /dev/null # a round not counted: the pools' first touch
for r in $(seq "$rounds"); do
  "$ab" 256 64 16 "${targets[@]}" | awk -v r=$r '{print r, $0}' >> "$out/ab"
done
kill "${pids[@]}"; wait "${pids[@]}" || true
rm -rf "$dir"/kv-off "$dir"/kv-sync "$dir"/kv-batch
i=0
for mode in off sync batch; do
  t=${targets[$i]}; i=$((i + 1))
  p50=$(awk -v t="target=$t" '$2==t {sub("p50_us=", "", $4); print $4}' "$out/ab" | median)
  p99=$(awk -v t="target=$t" '$2==t {sub("p99_us=", "", $6); print $6}' "$out/ab" | median)
  all=$(awk -v t="target=$t" '$2==t {sub("p50_us=", "", $4); printf "%s ", $4}' "$out/ab")
  printf "  %-6s AppendKV p50 %7.1f us  p99 %8.1f us   (p50 of each round: %s)\n" "$mode" "$p50" "$p99" "$all"
done
fi
