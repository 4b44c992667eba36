"""asyncio and the decode stream: awaiting a Call does not block the event
loop; a serving-style decode loop with two micro-batches in flight per
layer gives exact outputs; errors come out of await; a stream's first
failure ends it, a request refused before sending does not."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

import attnd
from helpers import Seqs
from reference import check_step


def test_awaiting_a_call_lets_other_tasks_run(start_server, connect, rng):
    c = connect(start_server("--model", "tiny-gqa").target)
    seqs = Seqs(c, 2, rng)
    seqs.prefill(20)
    q = seqs.make_q(2)

    async def main():
        other_ran = asyncio.Event()

        async def caller():
            out = await c.attend_async(0, seqs.sessions, q)
            # the other task ran while this one awaited the reply: the wait
            # happened off the event loop
            return other_ran.is_set(), out

        async def other():
            other_ran.set()

        t = asyncio.create_task(caller())
        await asyncio.sleep(0)  # caller sends and suspends on the reply
        await other()
        return await t

    ran, out = asyncio.run(main())
    assert ran
    check_step(seqs.mirror, seqs.ids, 0, q, out)


def test_two_micro_batches_in_flight_per_layer_decode_exactly(start_server, connect, rng):
    """The serving-engine pattern: the batch split in two micro-batches;
    per layer, micro-batch A's Attend is in flight while B's starts."""
    c = connect(start_server("--model", "tiny-mla").target)
    seqs = Seqs(c, 4, rng)
    seqs.prefill(24)
    halves = [[0, 1], [2, 3]]

    async def layer_step(layer: int, idx):
        q, kv = seqs.make_q(len(idx)), seqs.make_kv(len(idx))
        pos = [seqs.mirror.length(seqs.ids[i], layer) for i in idx]
        call = c.attend_async(layer, [seqs.sessions[i] for i in idx], q, new_kv=kv,
                              positions=pos, return_lse=True)
        out, lse = await call
        seqs.record(idx, layer, kv)
        return check_step(seqs.mirror, [seqs.ids[i] for i in idx], layer, q, out, lse)

    async def micro_batch(idx):
        worst = 0.0
        for _ in range(3):  # decode steps
            for layer in range(seqs.m.n_layers):
                worst = max(worst, await layer_step(layer, idx))
        return worst

    async def main():
        return await asyncio.gather(*(micro_batch(h) for h in halves))

    assert max(asyncio.run(main())) <= 1e-5
    assert c.stats().attend_calls == 2 * 3 * seqs.m.n_layers


def test_an_error_comes_out_of_await(start_server, connect, rng):
    c = connect(start_server("--model", "tiny-gqa").target)
    seqs = Seqs(c, 1, rng)

    async def main():
        await c.attend_async(0, seqs.sessions, np.zeros((1, 8, 30), np.float32))

    with pytest.raises(attnd.InvalidArgumentError, match="q.shape"):
        asyncio.run(main())


def test_a_stream_failure_ends_the_stream_and_a_new_one_works(start_server, connect, rng):
    c = connect(start_server("--model", "tiny-gqa").target)
    seqs = Seqs(c, 2, rng)
    seqs.prefill(8)
    st = c.stream()
    seqs.step(0, api=st.attend)
    bad = np.zeros((2, 8, 31), np.float32)
    with pytest.raises(attnd.InvalidArgumentError, match="q.shape") as first:
        st.attend(0, seqs.sessions, bad)
    with pytest.raises(attnd.InvalidArgumentError) as later:  # ended: the same error
        st.attend(0, seqs.sessions, seqs.make_q(2))
    assert later.value.message == first.value.message
    st.close()  # the failure was raised already: close does not raise it again
    with c.stream() as st2:
        seqs.step(0, api=st2.attend)


def test_a_request_refused_before_sending_leaves_the_stream_usable(start_server, connect, rng):
    c = connect(start_server("--model", "tiny-gqa").target)
    seqs = Seqs(c, 2, rng)
    seqs.prefill(8)
    with c.stream() as st:
        with pytest.raises(attnd.InvalidArgumentError, match="out_capacity"):
            st.attend(0, seqs.sessions, seqs.make_q(2), out=np.empty(3, np.float32))
        seqs.step(1, api=st.attend)


def test_a_stream_may_be_shared_by_threads(start_server, connect, rng):
    from concurrent.futures import ThreadPoolExecutor
    c = connect(start_server("--model", "tiny-gqa").target)
    seqs = Seqs(c, 2, rng)
    seqs.prefill(8)
    qs = [seqs.make_q(2) for _ in range(8)]
    with c.stream() as st, ThreadPoolExecutor(4) as ex:
        outs = list(ex.map(lambda q: st.attend(2, seqs.sessions, q), qs))
    for q, out in zip(qs, outs):
        check_step(seqs.mirror, seqs.ids, 2, q, out)
