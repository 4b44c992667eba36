#!/usr/bin/env bash
# Interleaved A/B of the Attend round trip between two builds (not a test:
# it prints a table). For before/after figures on a shared machine, where
# two transport_bench.sh runs minutes apart measure the neighbours' load
# more than the change.
#
# Starts one 1-rank attnd (deepseek-v3, --ucx-listen auto) from each build,
# then ROUNDS times, for B = 1 and 32 and each mode, runs that build's
# attend_rtt (client/bench/transport/attend_rtt.c) against its own attnd,
# A then B, back to back. Prints the median over rounds of each run's p50:
# round trip, net (minus the server's kernel time), and the server's queue
# (arrival through decoding the request), validation and reply encoding.
# A build's attend_rtt uses that build's libattnd (LD_LIBRARY_PATH).
#
# usage: client/bench/transport/ab_rtt.sh BUILD_A BUILD_B
#   env: ROUNDS (7) ITERS1 (200) ITERS32 (30) MODES ("grpc grpc-stream ucx ucx-sync")
set -euo pipefail

A=${1:?usage: ab_rtt.sh BUILD_A BUILD_B}
B=${2:?usage: ab_rtt.sh BUILD_A BUILD_B}
ROUNDS=${ROUNDS:-7}
ITERS1=${ITERS1:-200}
ITERS32=${ITERS32:-30}
MODES=${MODES:-"grpc grpc-stream ucx ucx-sync"}
export UCX_WARN_UNUSED_ENV_VARS=n

tmp=$(mktemp -d /tmp/attnd-ab-XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2> /dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2> /dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT

start() { # build name
    "$1/service/attnd" --model deepseek-v3 --listen 127.0.0.1:0 --port-file "$tmp/$2.port" \
        --kv-memory 512Mi --threads 1 --kernel-threads 1 --ucx-listen auto > "$tmp/$2.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 600); do [[ -s $tmp/$2.port ]] && return 0; sleep 0.05; done
    echo "ab_rtt: $1/service/attnd did not start" >&2
    return 1
}
start "$A" a
start "$B" b

rtt() { # build port mode batch
    local it=$ITERS1
    [[ $4 -gt 1 ]] && it=$ITERS32
    LD_LIBRARY_PATH="$(cd "$1/client/lib" && pwd)" "$1/client/bench/attend_rtt" \
        "127.0.0.1:$(cat "$tmp/$2.port")" "$3" "$4" "$it" 10 1
}

for r in $(seq "$ROUNDS"); do
    for b in 1 32; do
        for m in $MODES; do
            echo "A $(rtt "$A" a "$m" "$b")"
            echo "B $(rtt "$B" b "$m" "$b")"
        done
    done
done > "$tmp/runs"

echo "attnd A/B: $(date -u +%FT%TZ), $(nproc) CPUs, A=$A B=$B, ROUNDS=$ROUNDS ITERS1=$ITERS1" \
     "ITERS32=$ITERS32; median over rounds of each run's p50, microseconds"
echo "| B | mode | A rtt | B rtt | A net | B net | A srv queue | B srv queue | A srv validate | B srv validate | A srv encode | B srv encode |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
python3 - "$tmp/runs" "$MODES" << 'EOF'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    who, rest = line.split(' ', 1)
    kv = dict(f.split('=') for f in rest.split())
    runs.setdefault((int(kv['batch']), kv['mode'], who), []).append(kv)
med = lambda L, k: statistics.median(float(x[k]) for x in L)
for b in (1, 32):
    for m in sys.argv[2].split():
        a, bb = runs[(b, m, 'A')], runs[(b, m, 'B')]
        cols = []
        for k in ('p50_us', 'net_p50_us', 'srv_queue_p50_us', 'srv_validate_p50_us',
                  'srv_encode_p50_us'):
            cols += ['%.0f' % med(a, k), '%.0f' % med(bb, k)]
        print('| %d | %s | %s |' % (b, m, ' | '.join(cols)))
EOF
