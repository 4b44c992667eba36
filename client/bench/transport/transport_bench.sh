#!/usr/bin/env bash
# Transport benchmark (issue 4 part 7). Not a test: it prints a table.
#
# Per-layer Attend round trip for a DeepSeek-V3 decode batch of B = 1 and
# B = 32 (query [B,128,576] bf16 = 147 KB per sequence, output [B,128,512]
# bf16 = 131 KB per sequence) through libattnd (attend_rtt) to a 1-rank
# attnd on loopback, over
#   grpc         unary Attend over gRPC
#   grpc-stream  AttendStream over gRPC (the decode-loop path)
#   ucx          Attend over UCX active messages (--ucx-listen); async
#                form, request sent from a packed copy; server timings.
#                Client and server share this host, so their endpoints go
#                without UCX error handling over shared memory + CMA (the
#                "UCX lanes" column says what UCX really used)
#   ucx-sync     the sync form: request sent zero-copy from q (iov); its
#                net and wire ("sync net", "sync wire") estimated with the
#                server timings of the async run just before
# and beside it, in the same run:
#   bare gRPC    grpc_pingpong: a C-core unary ping-pong with attnd's
#                channel arguments, request and reply of the same sizes
#   ucx_perftest -t tag_lat between two processes on this host; its
#                50%ile "latency" is half a same-size round trip, so the
#                baseline round trip for request R and reply P bytes is
#                lat(R) + lat(P). Three times: without -e (shared memory +
#                CMA: what attnd's same-host endpoints use; "pt shm"), with
#                -e after UCX_POSIX_ERROR_HANDLING=y UCX_SYSV_ERROR_HANDLING=y
#                (shared memory with peer error handling: UCX 1.13 drops
#                the CMA lane; "pt shm -e"), and with -e alone (TCP; what
#                attnd used before it watched same-host peers by pidfd;
#                "pt tcp -e").
# Ratios: gRPC net / bare gRPC and UCX net / pt shm (targets <= 1.25 and
# <= 1.5).
#
# Transport vs compute: every session holds a tiny context (CTX tokens,
# default 1, in layer 0) and the query appends nothing; on top of that the
# server reports its kernel (engine) time with every reply (gRPC trailer,
# UCX reply header) and "net" is the round trip minus it. What net still
# holds besides the transport: request decode, validation, and encoding
# the reply (f32 -> bf16 conversion; the srv encode column).
#
# Each measurement is the p50 of ITERS calls; the table shows the median
# of REPEATS such runs (the machine is shared: medians, not means).
# A 2-rank group is measured too when attnd has --group (issue 4, parts
# 1-3); otherwise that row says skipped.
#
# usage: client/bench/transport/transport_bench.sh [BUILD_DIR]
#   env: REPEATS (5) ITERS1 (300) ITERS32 (40) CTX (1) BATCHES ("1 32")
set -euo pipefail

B=${1:-build}
ATTND=$B/service/attnd
RTT=$B/client/bench/attend_rtt
PP=$B/client/bench/grpc_pingpong
REPEATS=${REPEATS:-5}
ITERS1=${ITERS1:-300}
ITERS32=${ITERS32:-40}
CTX=${CTX:-1}
BATCHES=${BATCHES:-"1 32"}
export UCX_WARN_UNUSED_ENV_VARS=n

for f in "$ATTND" "$RTT" "$PP"; do
    [[ -x $f ]] || { echo "transport_bench: $f not built (cmake --build $B)" >&2; exit 2; }
done
command -v ucx_perftest > /dev/null || { echo "transport_bench: no ucx_perftest" >&2; exit 2; }

tmp=$(mktemp -d /tmp/attnd-tbench-XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2> /dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2> /dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT

wait_file() { # path: wait up to 30 s for it
    for _ in $(seq 600); do [[ -s $1 ]] && return 0; sleep 0.05; done
    echo "transport_bench: $1 never appeared" >&2
    return 1
}

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
field() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p"; } # key: value from a key=value line

# The TCP port process PID listens on (its first), once it listens: every
# server here binds port 0 and we read the port back (never "pick a free
# port, bind it later": another process may take it in between).
listen_port() {
    local p
    for _ in $(seq 600); do
        p=$(ss -Hltnp 2> /dev/null | grep "pid=$1," | awk '{print $4}' | sed 's/.*://' | head -1)
        [[ -n $p ]] && { echo "$p"; return 0; }
        kill -0 "$1" 2> /dev/null || break
        sleep 0.05
    done
    echo "transport_bench: process $1 does not listen" >&2
    return 1
}

# ucx_perftest tag_lat 50%ile (us) for one message size; extra flags
# (e.g. -e: endpoints with error handling) go to the client, which passes
# them on to the server; PT_ENV (VAR=value ...) goes to both. Server and
# client are pinned to CPUs 0 and 1: two busy-pollers that never yield,
# left to share one core, take turns only at the scheduler tick (p50 of 4
# to 8 ms for 4.7 MB were measured that way on this 2-CPU VM).
PIN_S=() PIN_C=()
if [[ $(nproc) -ge 2 ]] && command -v taskset > /dev/null; then
    PIN_S=(taskset -c 0)
    PIN_C=(taskset -c 1)
fi
perftest_lat() {
    local size=$1 iters=$2 port out
    shift 2
    for _ in 1 2 3 4 5; do
        env ${PT_ENV:-} "${PIN_S[@]}" ucx_perftest -p 0 > /dev/null 2>&1 &
        local sp=$!
        port=$(listen_port "$sp") || { kill "$sp" 2> /dev/null || true; continue; }
        if out=$(env ${PT_ENV:-} "${PIN_C[@]}" ucx_perftest 127.0.0.1 -p "$port" -t tag_lat -s "$size" \
                     -n $((iters < 500 ? 500 : iters)) -w $((iters / 10 + 1)) -f "$@" \
                     2> /dev/null | tail -1); then
            wait "$sp" 2> /dev/null || true
            echo "$out" | awk '{print $2}'
            return 0
        fi
        kill "$sp" 2> /dev/null || true
        wait "$sp" 2> /dev/null || true
    done
    echo "transport_bench: ucx_perftest failed for $size bytes" >&2
    return 1
}

# Start attnd NAME with extra flags; PORT gets its gRPC port. (Not in a
# subshell: the pid must reach the cleanup.)
spawn_attnd() {
    local name=$1
    shift
    "$ATTND" --model deepseek-v3 --listen 127.0.0.1:0 --port-file "$tmp/$name.port" --kv-memory 512Mi \
        --threads 1 --kernel-threads 1 --ucx-listen auto "$@" > "$tmp/$name.log" 2>&1 &
    pids+=($!)
}
start_attnd() {
    spawn_attnd "$@"
    wait_file "$tmp/$1.port" || return 1
    PORT=$(cat "$tmp/$1.port")
}

# round trip = lat(req) + lat(rep) (us) for ucx_perftest with PT_ENV / flags
perftest_rtt() {
    local req=$1 rep=$2 iters=$3 l1 l2
    shift 3
    l1=$(perftest_lat "$req" "$iters" "$@")
    l2=$(perftest_lat "$rep" "$iters" "$@")
    awk -v a="$l1" -v b="$l2" 'BEGIN {printf "%.1f", a + b}'
}

# One row per batch size: TARGET LABEL
measure() {
    local target=$1 label=$2
    for b in $BATCHES; do
        local iters=$ITERS1
        [[ $b -gt 1 ]] && iters=$ITERS32
        local g=() gn=() gw=() gs=() u=() us=() un=() uw=() usn=() usw=() k=() e=() bare=() pe=() ps=() pse=()
        local req=0 rep=0 lanes=?
        for r in $(seq "$REPEATS"); do
            local line
            line=$("$RTT" "$target" grpc "$b" "$iters" 10 "$CTX")
            req=$(field req_bytes <<< "$line")
            rep=$(field rep_bytes <<< "$line")
            g+=("$(field p50_us <<< "$line")")
            gn+=("$(field net_p50_us <<< "$line")")
            gw+=("$(field wire_p50_us <<< "$line")")
            gs+=("$("$RTT" "$target" grpc-stream "$b" "$iters" 10 "$CTX" | field p50_us)")
            line=$("$RTT" "$target" ucx "$b" "$iters" 10 "$CTX")
            lanes=$(sed -n 's/^transports=ucx \([^(]*\).*/\1/p' <<< "$line" | sed 's/ *$//; s/ /+/g')
            u+=("$(field p50_us <<< "$line")")
            un+=("$(field net_p50_us <<< "$line")")
            uw+=("$(field wire_p50_us <<< "$line")")
            k+=("$(field kernel_p50_us <<< "$line")")
            e+=("$(field srv_encode_p50_us <<< "$line")")
            local kk ee vv
            kk=$(field kernel_p50_us <<< "$line")
            vv=$(field srv_validate_p50_us <<< "$line")
            ee=$(field srv_encode_p50_us <<< "$line")
            # the sync form reports no server timings: its net and wire are
            # estimated with the async run's (same request, same server)
            line=$("$RTT" "$target" ucx-sync "$b" "$iters" 10 "$CTX")
            us+=("$(field p50_us <<< "$line")")
            usn+=("$(field p50_us <<< "$line" | awk -v k="$kk" '{printf "%.1f", $1 - k}')")
            usw+=("$(field p50_us <<< "$line" | awk -v k="$kk" -v v="$vv" -v e="$ee" '{printf "%.1f", $1 - k - v - e}')")
            if [[ $label == 1-rank ]]; then
                local pf="$tmp/pp.$b.$r.port"
                "$PP" server "$pf" "$rep" > /dev/null 2>&1 &
                local ppid=$!
                wait_file "$pf"
                bare+=("$("$PP" client "127.0.0.1:$(cat "$pf")" "$req" "$iters" 10 | field p50_us)")
                kill "$ppid"
                wait "$ppid" 2> /dev/null || true
                ps+=("$(PT_ENV= perftest_rtt "$req" "$rep" "$iters")")
                pse+=("$(PT_ENV="UCX_POSIX_ERROR_HANDLING=y UCX_SYSV_ERROR_HANDLING=y" \
                         perftest_rtt "$req" "$rep" "$iters" -e)")
                pe+=("$(PT_ENV= perftest_rtt "$req" "$rep" "$iters" -e)")
            fi
        done
        if [[ $label == 1-rank ]]; then
            BASE_BARE[$b]=$(echo "${bare[*]}" | median)
            BASE_PE[$b]=$(echo "${pe[*]}" | median)
            BASE_PS[$b]=$(echo "${ps[*]}" | median)
            BASE_PSE[$b]=$(echo "${pse[*]}" | median)
        fi
        awk -v l="$label" -v b="$b" -v rq="$req" -v rp="$rep" \
            -v g="$(echo "${g[*]}" | median)" -v gn="$(echo "${gn[*]}" | median)" \
            -v gw="$(echo "${gw[*]}" | median)" -v uw="$(echo "${uw[*]}" | median)" \
            -v us="$(echo "${us[*]}" | median)" -v usn="$(echo "${usn[*]}" | median)" \
            -v usw="$(echo "${usw[*]}" | median)" \
            -v gs="$(echo "${gs[*]}" | median)" -v bb="${BASE_BARE[$b]}" \
            -v u="$(echo "${u[*]}" | median)" -v un="$(echo "${un[*]}" | median)" \
            -v k="$(echo "${k[*]}" | median)" -v e="$(echo "${e[*]}" | median)" \
            -v pe="${BASE_PE[$b]}" -v ps="${BASE_PS[$b]}" -v pse="${BASE_PSE[$b]}" \
            -v lanes="$lanes" 'BEGIN {
            printf "| %-6s | %2d | %4.0f/%-4.0f | %6.0f | %6.0f | %6.0f | %6.0f | %6.0f | %5.2fx %5.2fx | %6.0f | %6.0f | %6.0f | %6.0f | %6.0f | %6.0f | %6.0f | %5.2fx %5.2fx | %5.2fx %5.2fx | %6.0f | %6.0f | %s | %6.0f | %6.0f |\n",
                   l, b, rq / 1024, rp / 1024, g, gs, gn, gw, bb, gn / bb, gw / bb, u, us, un, uw, usn, usw, ps,
                   un / ps, uw / ps, usn / ps, usw / ps, pse, pe, lanes, k, e }'
    done
}

declare -A BASE_BARE BASE_PE BASE_PS BASE_PSE
echo "attnd transport benchmark: $(date -u +%FT%TZ), $(nproc) CPUs, REPEATS=$REPEATS" \
     "ITERS1=$ITERS1 ITERS32=$ITERS32 CTX=$CTX; p50 per run, median of runs, microseconds;"
echo "net = round trip - server kernel time; wire = net - server validation - server reply encoding"
echo "| group  |  B | req/rep KiB | gRPC | gRPC strm | gRPC net | gRPC wire | bare gRPC | net, wire / bare | UCX | UCX sync | UCX net | UCX wire | sync net | sync wire | pt shm | net, wire / pt shm | sync net, wire / pt shm | pt shm -e | pt tcp -e | UCX lanes | srv kernel | srv encode |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"

start_attnd r1
measure "127.0.0.1:$PORT" 1-rank

if "$ATTND" --help 2>&1 | grep -q -- '--group'; then
    # rendezvous ports 0, published in the group dir for the peers
    mkdir -p "$tmp/group"
    group="127.0.0.1:0,127.0.0.1:0"
    # both ranks start at once: each may wait for its peers
    spawn_attnd g0 --rank 0 --group "$group" --group-dir "$tmp/group"
    spawn_attnd g1 --rank 1 --group "$group" --group-dir "$tmp/group"
    if wait_file "$tmp/g0.port" && wait_file "$tmp/g1.port"; then
        measure "127.0.0.1:$(cat "$tmp/g0.port")" 2-rank ||
            { echo "| 2-rank | failed: attnd logs follow |"; tail -5 "$tmp"/g*.log; }
    else
        echo "| 2-rank | skipped: the group did not start |"
    fi
else
    echo "| 2-rank | skipped: attnd has no --group yet (issue 4 parts 1-3) |"
fi
