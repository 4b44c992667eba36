#!/usr/bin/env bash
# A worker group across "hosts" without containers: network namespaces
# joined by veth pairs to a bridge.
#
#   ns h0 (10.77.0.1) rank 0 ---+
#   ns h1 (10.77.0.2) rank 1 ---+--- br0 in ns sw
#   ns c  (10.77.0.10) client --+
#
# Each rank runs in its own namespace at its own address (gRPC on :7700,
# the group's UCX listener on :7800, metrics on :9400), the client in a
# third. Checks, in order:
#  0. neither rank keeps a shared-memory worker for the other (their logs);
#  1. attnd-cli demo through rank 0 and through rank 1 (any rank leads):
#     every output against the float64 reference (PASS);
#  2. rank 1's link down (ip link set ... down on the bridge side): a call
#     through rank 0 answers UNAVAILABLE naming rank 1, within the client's
#     deadline (the status is UNAVAILABLE, not DEADLINE_EXCEEDED), and rank
#     0's readiness turns NOT_SERVING, its metrics count the failure;
#  3. link up again: rank 0 is ready again and the demo passes again.
# The addresses exist only inside the namespaces this script creates; no
# packet leaves them. Needs root and permission to create namespaces;
# otherwise exit 77 (skipped) with the reason. CTest passes the programs in
# ATTND_BIN and ATTND_CLI. Waits are hang guards only (no timing asserted).
set -euo pipefail

ATTND_BIN=${ATTND_BIN:?ATTND_BIN: path of attnd}
ATTND_CLI=${ATTND_CLI:?ATTND_CLI: path of attnd-cli}
PY=python3
[ -x /usr/bin/python3 ] && PY=/usr/bin/python3
tag=attnd$$
SW=$tag-sw H0=$tag-h0 H1=$tag-h1 C=$tag-c
A0=10.77.0.1 A1=10.77.0.2 AC=10.77.0.10
GROUP=$A0:7800,$A1:7800
tmp=$(mktemp -d)
pids=()
made=()

say() { echo "test_netns: $*"; }
fail() {
  echo "test_netns: FAIL: $*" >&2
  for f in "$tmp"/*.log; do
    [ -f "$f" ] && { echo "--- $f"; tail -n 20 "$f"; } >&2
  done
  exit 1
}
skip() {
  echo "test_netns: SKIP: $*" >&2
  exit 77
}
cleanup() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  for ns in "${made[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

# ---- can we? -----------------------------------------------------------------
[ "$(id -u)" -eq 0 ] || skip "needs root to create network namespaces (run as root)"
command -v ip >/dev/null || skip "iproute2's ip is not installed"
ip netns add "$SW" 2>"$tmp/netns.err" ||
  skip "network namespaces are not permitted here: $(cat "$tmp/netns.err")"
made+=("$SW")
ip -n "$SW" link add br0 type bridge 2>"$tmp/netns.err" ||
  skip "no bridge devices in a namespace here: $(cat "$tmp/netns.err")"

# ---- the network ----------------------------------------------------------------
ip -n "$SW" link set br0 up
ip -n "$SW" link set lo up
host() { # host NS ADDR PORTNAME: a namespace with eth0 on the bridge
  local ns=$1 addr=$2 port=$3
  ip netns add "$ns"
  made+=("$ns")
  ip link add eth0 netns "$ns" type veth peer name "$port" netns "$SW"
  ip -n "$SW" link set "$port" master br0 up
  ip -n "$ns" addr add "$addr/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" link set lo up
}
host "$H0" "$A0" p0
host "$H1" "$A1" p1
host "$C" "$AC" pc
# reachable: a TCP connect to a closed port is refused (not timed out)
ip netns exec "$C" "$PY" -c '
import socket, sys
s = socket.socket()
s.settimeout(10)
try:
    s.connect((sys.argv[1], 9))
except ConnectionRefusedError:
    sys.exit(0)
except OSError as e:
    sys.exit(f"{sys.argv[1]}: {e}")
' "$A1" || fail "the namespaces cannot reach each other"

# ---- the group -----------------------------------------------------------------
rank() { # rank NS R ADDR
  local ns=$1 r=$2 addr=$3
  ip netns exec "$ns" "$ATTND_BIN" --model tiny-gqa --listen "$addr:7700" \
    --metrics-listen "$addr:9400" --threads 2 --kernel-threads 1 --kv-memory 64Mi \
    --rank "$r" --group "$GROUP" --group-connect-ms 0 --group-timeout-ms 2000 \
    > "$tmp/rank$r.log" 2>&1 &
  pids+=($!)
}
rank "$H0" 0 "$A0"
rank "$H1" 1 "$A1"

cli() { # cli ADDR ARGS...: attnd-cli from the client namespace
  local addr=$1
  shift
  ip netns exec "$C" "$ATTND_CLI" --target "$addr:7700" --deadline-ms 15000 "$@"
}
wait_health() { # wait_health ADDR SERVICE WANT
  for _ in $(seq 1 600); do
    [ "$(cli "$1" health "$2" 2>/dev/null || true)" = "$3" ] && return 0
    sleep 0.1
  done
  fail "$1 health $2 did not become $3 within the 60 s hang guard"
}
metric() { # metric ADDR NAME: the value of an unlabelled sample, via HTTP from ns c
  ip netns exec "$C" "$PY" -c '
import sys, urllib.request
text = urllib.request.urlopen(f"http://{sys.argv[1]}:9400/metrics", timeout=30).read().decode()
print(next(l.split()[1] for l in text.splitlines() if l.split(" ")[0] == sys.argv[2]))
' "$1" "$2"
}
demo() { # demo ADDR: a checked decode; its output in $tmp/demo.out
  cli "$1" demo --sessions 2 --prefill 64 --steps 2 --dtype f32 > "$tmp/demo.out" 2>&1
}

wait_health "$A0" readiness SERVING
wait_health "$A1" readiness SERVING
say "2 ranks in namespaces $H0 and $H1 connected; client in $C"
# ranks on other hosts keep no shared-memory worker for each other (the one
# a rank's first card offered goes once the peer's card says where it is)
for r in 0 1; do
  grep -q "rank $((1 - r)) is on another host: its worker for it goes" "$tmp/rank$r.log" ||
    fail "rank $r kept a shared-memory worker for rank $((1 - r)) on another host"
done
say "no shared-memory worker kept for the other host's rank"

# ---- 1. outputs against the reference, through either rank ---------------------------
for a in "$A0" "$A1"; do
  demo "$a" || fail "demo through $a failed: $(cat "$tmp/demo.out")"
  grep -q "PASS" "$tmp/demo.out" || fail "demo through $a did not PASS: $(cat "$tmp/demo.out")"
  say "demo through $a: $(grep -o 'max relative error [^ ]*' "$tmp/demo.out" | head -1), PASS"
done
failures0=$(metric "$A0" attnd_group_peer_failures_total)

# ---- 2. rank 1's link down -----------------------------------------------------------------
ip -n "$SW" link set p1 down
say "link of rank 1 down"
if demo "$A0"; then
  fail "demo through rank 0 succeeded with rank 1 cut off: $(cat "$tmp/demo.out")"
fi
grep -q "UNAVAILABLE" "$tmp/demo.out" ||
  fail "expected UNAVAILABLE through rank 0, got: $(cat "$tmp/demo.out")"
grep -q "rank 1" "$tmp/demo.out" || fail "UNAVAILABLE does not name rank 1: $(cat "$tmp/demo.out")"
grep -q "DEADLINE_EXCEEDED" "$tmp/demo.out" && fail "the client's deadline passed first"
say "through rank 0: $(grep -o 'UNAVAILABLE.*' "$tmp/demo.out" | head -1)"
wait_health "$A0" readiness NOT_SERVING
[ "$(cli "$A0" health liveness)" = SERVING ] || fail "rank 0's liveness dropped with its peer"
failures1=$(metric "$A0" attnd_group_peer_failures_total)
[ "$failures1" -gt "$failures0" ] ||
  fail "attnd_group_peer_failures_total did not grow ($failures0 -> $failures1)"
say "rank 0: readiness NOT_SERVING, liveness SERVING, peer failures $failures0 -> $failures1"

# ---- 3. link up again: recovery -------------------------------------------------------------
ip -n "$SW" link set p1 up
say "link of rank 1 up"
wait_health "$A0" readiness SERVING
[ "$(metric "$A0" attnd_group_peers_connected)" = 1 ] || fail "rank 0 does not see its peer"
demo "$A0" || fail "demo after recovery failed: $(cat "$tmp/demo.out")"
grep -q "PASS" "$tmp/demo.out" || fail "demo after recovery did not PASS: $(cat "$tmp/demo.out")"
say "recovered: demo through rank 0 PASS"

# ---- the ranks stop cleanly ---------------------------------------------------------------------
for p in "${pids[@]}"; do kill -TERM "$p"; done
for i in "${!pids[@]}"; do
  rc=0
  wait "${pids[$i]}" || rc=$?
  [ "$rc" -eq 0 ] || fail "rank $i exited $rc after SIGTERM"
done
pids=()
echo "test_netns: 1 passed, 0 failed"
