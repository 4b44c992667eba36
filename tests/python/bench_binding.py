"""What the Python binding adds per Attend call (a measurement, not a test).

Starts an attnd (port 0), opens `--batch` sessions with `--prefill` tokens
in every layer, and times `--calls` sequential Attend calls of one layer
(no new KV: every call does the same work) in each way a program can make
them, alternating the ways round-robin within each repeat so that drift on
a shared machine hits them alike:

  C args reused      the ctypes call of attnd_client_attend on arguments
                     built once: the floor (libattnd + gRPC + server)
  attend             Client.attend: arguments, output allocation, result
  attend_async+wait  Client.attend_async(...).wait() on the calling thread
  await (asyncio)    await Client.attend_async(...) in an event loop: the
                     wait runs on the client's executor thread
  C stream ...       attnd_stream_attend on arguments built once (the
                     stream's floor)
  stream             Stream.attend on one AttendStream

Prints, per way, the median over repeats of the per-repeat median latency
and of its excess over the floor measured in the same repeat (the ways
alternate every 50 calls, so drift on a shared machine hits them alike).

  python3 tests/python/bench_binding.py [--model deepseek-v3] [--batch 4]
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1] / "client" / "python"))

import numpy as np  # noqa: E402

import attnd  # noqa: E402
from attnd import _lib  # noqa: E402
from attnd._request import Request  # noqa: E402
from attnd_server import Server  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny-gqa")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prefill", type=int, default=64)
    ap.add_argument("--calls", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--transport", default="grpc")
    a = ap.parse_args()

    flags = ["--model", a.model, "--kv-memory", "1Gi", "--threads", "2"]
    if a.transport == "ucx":
        flags += ["--ucx-listen", "auto"]
    srv = Server(flags)
    try:
        c = attnd.Client(srv.target, transport=a.transport)
        m = c.model
        rng = np.random.default_rng(1)
        ss = [c.create_session() for _ in range(a.batch)]
        entry = (m.kv_token_elems,) if m.kind == attnd.AttnKind.MLA else (2, m.n_kv_heads,
                                                                          m.head_dim)
        for s in ss:
            s.append_kv(0, rng.standard_normal((a.prefill,) + entry).astype(np.float32))
        q = rng.standard_normal((a.batch, m.n_q_heads, m.d_k)).astype(np.float32)
        out = np.empty((a.batch, m.n_q_heads, m.d_v), np.float32)
        req = Request(c, 0, ss, q, out=out)
        err = _lib.Error()
        L, h = c._L, c._h
        st = c.stream()

        def c_floor():
            if L.attnd_client_attend(h, ctypes.byref(req.args), ctypes.byref(err)):
                raise RuntimeError(err.msg)

        sth = st._h

        def c_stream_floor():
            if L.attnd_stream_attend(sth, ctypes.byref(req.args), ctypes.byref(err)):
                raise RuntimeError(err.msg)

        def unary():
            c.attend(0, ss, q)

        def async_wait():
            c.attend_async(0, ss, q).wait()

        def stream():
            st.attend(0, ss, q)

        loop = asyncio.new_event_loop()

        async def awaited_n(n):
            t = []
            for _ in range(n):
                t0 = time.perf_counter_ns()
                await c.attend_async(0, ss, q)
                t.append(time.perf_counter_ns() - t0)
            return t

        ways = {"C args reused": c_floor, "attend": unary, "attend_async+wait": async_wait,
                "await (asyncio)": None, "C stream, args reused": c_stream_floor,
                "stream": stream}
        for f in (c_floor, unary, async_wait, c_stream_floor, stream):  # warm-up
            for _ in range(50):
                f()
        loop.run_until_complete(awaited_n(50))
        per: dict = {k: [] for k in ways}
        excess: dict = {k: [] for k in ways}
        chunk = 50
        for _ in range(a.repeat):
            t: dict = {k: [] for k in ways}
            for _ in range(max(1, a.calls // chunk)):  # ways alternate every `chunk` calls
                for name, f in ways.items():
                    if f is None:
                        t[name] += loop.run_until_complete(awaited_n(chunk))
                        continue
                    for _ in range(chunk):
                        t0 = time.perf_counter_ns()
                        f()
                        t[name].append(time.perf_counter_ns() - t0)
            floor_r = statistics.median(t["C args reused"]) / 1e3
            for name in ways:
                med = statistics.median(t[name]) / 1e3
                per[name].append(med)
                excess[name].append(med - floor_r)
        st.close()
        print(f"{a.model}, batch {a.batch}, {a.prefill} tokens, {a.transport}: {a.repeat} "
              f"repeats of {a.calls} calls per way (ways alternate every {chunk} calls); "
              f"us per call: median over repeats of the per-repeat median, and of the "
              f"per-repeat excess over the C floor")
        for name in ways:
            print(f"  {name:20s} {statistics.median(per[name]):8.1f}   "
                  f"+{statistics.median(excess[name]):6.1f}   "
                  f"(excess per repeat {', '.join(f'{x:.0f}' for x in excess[name])})")
        for s in ss:
            s.close()
        c.close()
        loop.close()
    finally:
        srv.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
