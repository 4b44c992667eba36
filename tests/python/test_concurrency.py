"""Threads, closing and exceptions: one client shared by many threads, a
session used from two threads at once, context managers that close on
exceptions, close() while calls are in flight. Every output is checked
against the float64 reference; no timing is asserted."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import attnd
from helpers import Seqs, rand
from reference import check_step


def test_many_threads_share_one_client(start_server, connect, seed):
    c = connect(start_server("--model", "tiny-mla", "--threads", "4").target)
    n_threads, steps = 8, 3

    def worker(t: int) -> float:
        seqs = Seqs(c, 2, np.random.default_rng(seed + t))
        seqs.prefill(20 + t)
        worst = 0.0
        for _ in range(steps):
            for layer in range(seqs.m.n_layers):
                worst = max(worst, seqs.step(layer))
        seqs.close()
        return worst

    with ThreadPoolExecutor(n_threads) as ex:
        errs = list(ex.map(worker, range(n_threads)))
    assert max(errs) <= 1e-5
    st = c.stats()
    assert st.attend_calls == n_threads * steps * 4 and st.sessions == 0


def test_a_session_used_from_two_threads(start_server, connect, rng):
    """Two threads drive the same session: each appends to and attends its
    own layers with new KV, and both also read a shared layer without
    appending; every answer matches the reference."""
    c = connect(start_server("--model", "tiny-mla").target)
    seqs = Seqs(c, 1, rng)
    seqs.prefill(30)
    s, sid = seqs.sessions[0], seqs.ids[0]
    m = seqs.m
    lock = threading.Lock()  # guards the mirror, not the client
    rngs = [np.random.default_rng(rng.integers(1 << 32)) for _ in range(2)]
    barrier = threading.Barrier(2)

    def worker(t: int) -> int:
        r = rngs[t]
        barrier.wait()
        checked = 0
        for _ in range(6):
            layer = t  # thread 0 owns layer 0, thread 1 layer 1
            q = rand(r, (1, m.n_q_heads, m.d_k), scale=2.0)
            kv = rand(r, (1, m.d_k))
            with lock:
                pos = seqs.mirror.length(sid, layer)
            out, lse = c.attend(layer, [s], q, new_kv=kv, positions=[pos], return_lse=True)
            with lock:
                seqs.mirror.append(sid, layer, kv)
                check_step(seqs.mirror, [sid], layer, q, out, lse)
            q3 = rand(r, (1, m.n_q_heads, m.d_k), scale=2.0)
            out3 = c.attend(3, [s], q3)  # the shared layer, read only
            check_step(seqs.mirror, [sid], 3, q3, out3)
            checked += 2
        return checked

    with ThreadPoolExecutor(2) as ex:
        assert sum(ex.map(worker, range(2))) == 24
    assert seqs.mirror.length(sid, 0) == seqs.mirror.length(sid, 1) == 36


def test_sessions_and_clients_close_when_an_exception_unwinds(start_server, connect, rng):
    srv = start_server("--model", "tiny-gqa")
    watcher = connect(srv.target)
    with pytest.raises(RuntimeError, match="boom"):
        with attnd.Client(srv.target) as c:
            with c.session() as s1, c.session() as s2:
                s1.append_kv(0, rand(rng, (3, 2, 2, 32)))
                assert watcher.stats().sessions == 2
                raise RuntimeError("boom")
    assert s1.closed and s2.closed and c.closed
    assert watcher.stats().sessions == 0


def test_a_failing_call_inside_with_blocks_still_closes_everything(start_server, connect):
    srv = start_server("--model", "tiny-gqa")
    watcher = connect(srv.target)
    with pytest.raises(attnd.InvalidArgumentError):
        with attnd.Client(srv.target) as c, c.session() as s, c.stream() as st:
            st.attend(0, [s], np.zeros((1, 5, 32), np.float32))
    assert watcher.stats().sessions == 0


def test_close_waits_for_calls_in_flight_and_unwaited_async_calls(start_server, rng):
    srv = start_server("--model", "tiny-gqa")
    c = attnd.Client(srv.target, deadline_ms=120000)
    seqs = Seqs(c, 4, rng)
    seqs.prefill(50)
    q = seqs.make_q(4)
    pending = [c.attend_async(layer, seqs.sessions, q) for layer in range(3)]
    st = c.stream()
    results, refused = [], []
    started = threading.Event()

    def busy():
        started.set()
        try:
            for _ in range(50):
                results.append(c.attend(0, seqs.sessions, q))
        except ValueError as e:  # close() began: later calls are refused
            refused.append(e)

    t = threading.Thread(target=busy)
    t.start()
    started.wait()
    c.close()
    t.join()
    assert len(results) + len(refused) >= 1 and len(refused) <= 1
    for out in results:  # calls that ran completed intact
        check_step(seqs.mirror, seqs.ids, 0, q, out)
    # close() waited the calls nobody waited; their results are kept
    for layer, call in enumerate(pending):
        check_step(seqs.mirror, seqs.ids, layer, q, call.wait())
    with pytest.raises(ValueError, match="closed"):
        st.attend(0, seqs.sessions, q)


def test_many_async_calls_in_flight_from_many_threads(start_server, connect, seed):
    c = connect(start_server("--model", "tiny-gqa").target)
    seqs = Seqs(c, 6, np.random.default_rng(seed))
    seqs.prefill(40)
    qs = [seqs.make_q(1) for _ in range(6)]

    def run(i: int):
        calls = [c.attend_async(layer, [seqs.sessions[i]], qs[i]) for layer in range(3)]
        return [(layer, call.wait()) for layer, call in enumerate(calls)]

    with ThreadPoolExecutor(6) as ex:
        for i, res in enumerate(ex.map(run, range(6))):
            for layer, out in res:
                check_step(seqs.mirror, [seqs.ids[i]], layer, qs[i], out)


def test_close_finishes_a_call_that_registers_after_close_began(start_server, rng):
    """attend_async counts itself in before its C call and registers its Call
    after it: close() must also finish a Call that appears while it runs
    (it used to wait for it forever). The library handle is wrapped so that
    the registration happens once close() has begun."""
    srv = start_server("--model", "tiny-gqa")
    c = attnd.Client(srv.target, deadline_ms=120000)
    seqs = Seqs(c, 1, rng)
    seqs.prefill(5)
    q = seqs.make_q(1)
    sent, closing = threading.Event(), threading.Event()

    class SlowRegistration:
        def __init__(self, lib):
            self._lib = lib

        def __getattr__(self, name):
            return getattr(self._lib, name)

        def attnd_client_attend_async(self, *a):
            st = self._lib.attnd_client_attend_async(*a)
            sent.set()
            closing.wait(30)
            time.sleep(0.3)  # let close() take its first look at the registry
            return st

    c._L = SlowRegistration(c._L)
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("call", c.attend_async(0, seqs.sessions, q)),
                         daemon=True)
    t.start()
    sent.wait(30)
    closer = threading.Thread(target=c.close, daemon=True)
    closing.set()
    closer.start()
    closer.join(60)  # hang guard
    t.join(60)
    assert not closer.is_alive(), "close() waits forever for a call registered after it began"
    check_step(seqs.mirror, seqs.ids, 0, q, box["call"].wait())
