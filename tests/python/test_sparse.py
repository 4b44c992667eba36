"""Sparse attention through the binding (worker/SPARSE.md): sessions
created with a policy and a policy table, Attend with given pages / tokens
and with return_pages, against a real attnd (tiny-gqa and tiny-mla, 16-token
pages).

Every output is compared with float64 attention computed here from the KV
the test sent (reference.Mirror), over exactly the tokens the policy says:
topk-pages with k = all pages equals dense; streaming equals dense over the
sink and window pages; given pages / tokens equal dense over exactly those
(and the newest token's page); the pages one layer returns, given to the
next, reproduce its output (over gRPC and UCX). The same through the
pipelined forms (attend_async with two micro-batches in flight, and
Stream.attend): a TidalDecode loop over every layer, and bad indices raising
the blocking call's error. Bad policies, tables and indices raise the Error
of their gRPC code naming the field.
"""

from __future__ import annotations

import numpy as np
import pytest

import attnd
from helpers import Seqs, rand
from reference import BOUND, LSE_BOUND, check_step, max_row_err, subset_ref, wire_value

PS = 16
MODELS = ["tiny-gqa", "tiny-mla"]


@pytest.fixture(params=MODELS)
def client(request, start_server, connect):
    return connect(start_server("--model", request.param, "--page-size", str(PS)).target)


def decode(seqs: Seqs, layer: int, **kw):
    """One Attend of every session (fresh q, one new entry each, positions
    given; sessions=: them otherwise named), recorded in the mirror: (q,
    out, lse, selection or None)."""
    n = len(seqs.sessions)
    q, kv = seqs.make_q(n), seqs.make_kv(n)
    pos = [seqs.mirror.length(sid, layer) for sid in seqs.ids]
    sessions = kw.pop("sessions", None) or seqs.sessions
    res = seqs.c.attend(layer, sessions, q, new_kv=kv, positions=pos, return_lse=True, **kw)
    seqs.record(range(n), layer, kv)
    return (q, *res, None) if len(res) == 2 else (q, *res)


def check_subset(seqs: Seqs, layer: int, q, out, lse, lists_of, tokens: bool = False) -> None:
    """out / lse of every session against float64 attention over
    lists_of(i) (its groups' pages, or tokens)."""
    qv, ov, lv = wire_value(q), attnd.as_float32(out), attnd.as_float32(lse)
    for i, sid in enumerate(seqs.ids):
        ro, rl = subset_ref(seqs.mirror, sid, layer, qv[i], lists_of(i), tokens)
        err = max_row_err(ov[i], ro)
        assert err <= BOUND[seqs.dt], f"session {i} layer {layer}: out error {err}"
        lerr = float(np.abs(lv[i] - rl).max() / max(1.0, np.abs(rl).max()))
        assert lerr <= LSE_BOUND, f"session {i} layer {layer}: lse error {lerr}"


def n_pages(seqs: Seqs, i: int, layer: int) -> int:
    return -(-seqs.mirror.length(seqs.ids[i], layer) // PS)


def test_topk_pages_with_k_all_pages_equals_dense_and_returns_every_page(client, rng):
    m = client.model
    sparse = Seqs(client, 2, rng, policy=attnd.Policy.topk(fraction=1.0, sink=PS))
    dense = Seqs(client, 2, rng)
    for layer in range(m.n_layers):  # the same KV in both
        for s, d in zip(sparse.sessions, dense.sessions):
            kv = rand(rng, (100 + 37 * layer,) + sparse.entry())
            s.append_kv(layer, kv)
            d.append_kv(layer, kv)
            sparse.mirror.append(s.id, layer, kv)
    for layer in range(m.n_layers):
        q, kv = sparse.make_q(2), sparse.make_kv(2)
        pos = [sparse.mirror.length(sid, layer) for sid in sparse.ids]
        out, lse, sel = client.attend(layer, sparse.sessions, q, new_kv=kv, positions=pos,
                                      return_lse=True, return_pages=True)
        dout, dlse = client.attend(layer, dense.sessions, q, new_kv=kv, positions=pos,
                                   return_lse=True)
        sparse.record(range(2), layer, kv)
        check_step(sparse.mirror, sparse.ids, layer, q, out, lse)
        np.testing.assert_array_equal(out, dout)  # the same pages in the same order
        np.testing.assert_array_equal(lse, dlse)
        assert not sel.tokens and sel.n_seqs == 2
        assert sel.groups in (1, m.n_kv_heads)
        for i in range(2):
            for g in range(sel.groups):
                np.testing.assert_array_equal(sel.list(i, g), np.arange(n_pages(sparse, i, layer)))
    # three query tokens at once (causal among themselves): still dense
    q, kv = sparse.make_q(2, S=3), sparse.make_kv(2, S=3)
    pos = [sparse.mirror.length(sid, 0) for sid in sparse.ids]
    out, lse, sel = client.attend(0, sparse.sessions, q, new_kv=kv, positions=pos,
                                  return_lse=True, return_pages=True)
    sparse.record(range(2), 0, kv, S=3)
    check_step(sparse.mirror, sparse.ids, 0, q, out, lse)
    np.testing.assert_array_equal(sel.list(1, sel.groups - 1), np.arange(n_pages(sparse, 1, 0)))


def test_a_policy_table_row_for_one_kv_head_applies_to_that_head_only(start_server, connect, rng):
    c = connect(start_server("--model", "tiny-gqa", "--page-size", str(PS)).target)
    sink, window = PS, 64
    head0 = attnd.PolicyRule(0, c.model.n_layers, attnd.Policy.streaming(window, sink), 0, 1)
    seqs = Seqs(c, 2, rng, policy=attnd.Policy.full(), policy_table=[head0])
    seqs.prefill(200)
    for layer in range(c.model.n_layers):
        q, out, lse, sel = decode(seqs, layer, return_pages=True)
        assert sel.groups == c.model.n_kv_heads == 2
        want = []
        for i in range(2):
            L = seqs.mirror.length(seqs.ids[i], layer)
            np_ = -(-L // PS)
            want.append([np.r_[0, (L - window) // PS:np_], np.arange(np_)])
            for g in range(2):
                np.testing.assert_array_equal(sel.list(i, g), want[i][g])
        check_subset(seqs, layer, q, out, lse, lambda i: want[i])


def test_streaming_equals_dense_over_the_sink_and_window_pages(client, rng):
    sink, window = PS, 64
    seqs = Seqs(client, 2, rng, policy=attnd.Policy.streaming(window=window, sink=sink))
    seqs.prefill(300)
    for step in range(3):
        for layer in range(client.model.n_layers):
            q, out, lse, sel = decode(seqs, layer, return_pages=True)
            want = []
            for i in range(2):
                L = seqs.mirror.length(seqs.ids[i], layer)
                pages = list(range(-(-sink // PS))) + list(range((L - window) // PS,
                                                                 -(-L // PS)))
                want.append([np.array(pages)] * sel.groups)
                for g in range(sel.groups):
                    np.testing.assert_array_equal(sel.list(i, g), pages)
            check_subset(seqs, layer, q, out, lse, lambda i: want[i])


@pytest.mark.parametrize("per_head", [False, True])
def test_given_pages_equal_dense_over_exactly_those_pages(client, rng, per_head):
    m = client.model
    if per_head and m.n_kv_heads == 1:
        pytest.skip("one list per KV head needs a GQA model")
    seqs = Seqs(client, 2, rng, policy=attnd.Policy.given_pages())
    seqs.prefill(250)
    groups = m.n_kv_heads if per_head else 1
    for layer in range(m.n_layers):
        L = seqs.mirror.length(seqs.ids[0], layer) + 1  # after this step's append
        old = (L - 1) // PS  # pages before the newest token's
        given = [[np.sort(rng.choice(old, size=int(rng.integers(1, old)), replace=False))
                  for _ in range(groups)] for _ in range(2)]
        arg = [g[0] for g in given] if not per_head else given
        q, out, lse, sel = decode(seqs, layer, given=arg, return_pages=True)
        want = [[np.append(x, old) for x in g] for g in given]  # and the newest page
        assert sel.groups == groups
        for i in range(2):
            for g in range(groups):
                np.testing.assert_array_equal(sel.list(i, g), want[i][g])
        check_subset(seqs, layer, q, out, lse, lambda i: want[i])


def test_given_tokens_equal_dense_over_exactly_those_tokens(client, rng):
    m = client.model
    seqs = Seqs(client, 2, rng, policy=attnd.Policy.given_tokens())
    seqs.prefill(200)
    for layer in range(m.n_layers):
        L = seqs.mirror.length(seqs.ids[0], layer) + 1
        given = np.stack([np.sort(rng.choice(L - 1, size=40, replace=False)) for _ in range(2)])
        # [n, k] array; on layer 1 the sessions by id (their policy unknown to the binding)
        q, out, lse, sel = decode(seqs, layer, given=given, return_pages=True,
                                  sessions=seqs.ids if layer == 1 else None)
        assert sel.tokens
        want = [np.append(g, L - 1) for g in given]  # and the newest token
        for i in range(2):
            np.testing.assert_array_equal(sel.list(i), want[i])
        check_subset(seqs, layer, q, out, lse, lambda i: [want[i]] * sel.groups, tokens=True)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("transport", ["grpc", "ucx"])
def test_pages_returned_by_topk_and_given_back_reproduce_the_output(start_server, connect, rng,
                                                                    model, transport):
    """TidalDecode: layer 0 selects (topk-pages, a quarter of the pages),
    layer 1 (given-pages) holds the same KV and gets the same query with
    the pages layer 0 returned: the same output, the same pages (Attend
    over gRPC, and over UCX, libattnd's other sparse path)."""
    srv = start_server("--model", model, "--page-size", str(PS), "--ucx-listen", "auto")
    client = connect(srv.target, transport=transport)
    m = client.model
    table = [attnd.PolicyRule(1, m.n_layers, attnd.Policy.given_pages())]
    seqs = Seqs(client, 2, rng, policy="topk-pages,fraction=0.25,sink=16", policy_table=table)
    for s in seqs.sessions:
        kv = rand(rng, (400,) + seqs.entry())
        for layer in (0, 1):
            s.append_kv(layer, kv)
            seqs.mirror.append(s.id, layer, kv)
    for step in range(3):
        q, kv = seqs.make_q(2), seqs.make_kv(2)
        pos = [seqs.mirror.length(sid, 0) for sid in seqs.ids]
        out0, lse0, sel0 = client.attend(0, seqs.sessions, q, new_kv=kv, positions=pos,
                                         return_lse=True, return_pages=True)
        out1, lse1, sel1 = client.attend(1, seqs.sessions, q, new_kv=kv, positions=pos,
                                         return_lse=True, given=sel0, return_pages=True)
        for layer in (0, 1):
            seqs.record(range(2), layer, kv)
        np.testing.assert_array_equal(out1, out0)
        np.testing.assert_array_equal(lse1, lse0)
        assert sel1 == sel0
        n = n_pages(seqs, 0, 0)
        assert len(sel0.list(0)) == max(-(-n // 4), 2)  # a quarter, at least sink + newest
        assert sel0.list(0)[0] == 0 and sel0.list(0)[-1] == n - 1
        check_subset(seqs, 0, q, out0, lse0, lambda i: sel0.lists()[i])
        check_subset(seqs, 1, q, out1, lse1, lambda i: sel0.lists()[i])


def expect(exc_type, field, fn, *args, **kw):
    with pytest.raises(exc_type) as e:
        fn(*args, **kw)
    msg = getattr(e.value, "message", str(e.value))
    assert field in msg, f"message does not name {field!r}: {msg}"
    return e.value


@pytest.mark.parametrize("kw,field", [
    (dict(policy=attnd.Policy.streaming(window=8)), "policy.window"),
    (dict(policy=attnd.Policy.topk(fraction=1.5)), "policy.topk_fraction"),
    (dict(policy=attnd.Policy(attnd.PolicyKind.FULL, window=64)), "policy.window"),
    (dict(policy_table=[(0, 1, attnd.Policy.full()), (2, 9, attnd.Policy.given_pages())]),
     "policy_table[1].layer_end"),
    (dict(policy_table=[(2, 1, "full")]), "policy_table[0].layer_end"),
    (dict(policy_table=[attnd.PolicyRule(0, 1, attnd.Policy.streaming(window=32))]),
     "policy_table[0].policy.window"),
])
def test_a_bad_policy_or_table_is_invalid_argument_naming_the_field(client, kw, field):
    before = client.stats().sessions
    e = expect(attnd.InvalidArgumentError, field, client.create_session, **kw)
    assert e.code is attnd.StatusCode.INVALID_ARGUMENT
    assert client.stats().sessions == before  # nothing created


def test_a_head_range_is_refused_on_mla_and_checked_on_gqa(client):
    m = client.model
    rule = attnd.PolicyRule(0, 1, attnd.Policy.full(), head_begin=0, head_end=m.n_kv_heads + 1)
    field = ("policy_table[0].head_begin" if m.kind == attnd.AttnKind.MLA
             else "policy_table[0].head_end")
    expect(attnd.InvalidArgumentError, field, client.create_session, policy_table=[rule])


def test_bad_given_indices_are_invalid_argument_naming_the_field_and_append_nothing(client, rng):
    seqs = Seqs(client, 1, rng, policy=attnd.Policy.given_pages())
    seqs.prefill(100)  # 7 pages once the step's token lands
    for given, field in (([[3, 9]], "given_idx[1]"), ([[4, 2]], "given_idx[1]"),
                         ([[[1], [2], [3]]], "given_groups")):
        q, kv = seqs.make_q(1), seqs.make_kv(1)
        expect(attnd.InvalidArgumentError, field, client.attend, 0, seqs.sessions, q,
               new_kv=kv, positions=[100], given=given)
    q, out, lse, _ = decode(seqs, 0, given=[[1, 3]])  # position 100 is still free
    check_subset(seqs, 0, q, out, lse, lambda i: [[1, 3, 6]] * client.model.n_kv_heads)


def test_misuse_of_the_sparse_arguments_is_a_python_error_naming_it(client, rng):
    seqs = Seqs(client, 1, rng, policy=attnd.Policy.given_pages())
    seqs.prefill(40)
    q = seqs.make_q(1)
    expect(ValueError, "policy.window", client.create_session,
           policy=attnd.Policy.streaming(window=-1))
    expect(ValueError, "given[0]", client.attend, 0, seqs.sessions, q, given=[[-1, 2]])
    expect(TypeError, "given[0]", client.attend, 0, seqs.sessions, q, given=[[0.5, 2.0]])
    expect(ValueError, "given", client.attend, 0, seqs.sessions, q, given=[[0], [1]])
    expect(ValueError, "chosen_capacity", client.attend, 0, seqs.sessions, q, return_pages=True)
    expect(ValueError, "policy", attnd.Policy.parse, "sliding,window=64")
    # a reply larger than the buffers: libattnd's INVALID_ARGUMENT naming them
    expect(attnd.InvalidArgumentError, "chosen_capacity", client.attend, 0, seqs.sessions, q,
           given=[[0, 1]], return_pages=True, chosen_capacity=1)
    out, sel = client.attend(0, seqs.sessions, q, given=[[0, 1]], return_pages=True,
                             chosen_capacity=8)
    assert out.shape == (1, client.model.n_q_heads, client.model.d_v)
    np.testing.assert_array_equal(sel.list(0), [0, 1, 2])  # and the newest token's page


# ---- the pipelined forms: attend_async and Stream.attend ---------------------------


def check_batch(seqs: Seqs, idx, layer: int, q, out, lse, sel) -> None:
    """out / lse of sessions idx (the call's, in order) against float64
    attention over exactly the lists sel reports for each."""
    qv, ov, lv = wire_value(q), attnd.as_float32(out), attnd.as_float32(lse)
    for j, i in enumerate(idx):
        ro, rl = subset_ref(seqs.mirror, seqs.ids[i], layer, qv[j], sel.lists()[j], sel.tokens)
        err = max_row_err(ov[j], ro)
        assert err <= BOUND[seqs.dt], f"session {i} layer {layer}: out error {err}"
        lerr = float(np.abs(lv[j] - rl).max() / max(1.0, np.abs(rl).max()))
        assert lerr <= LSE_BOUND, f"session {i} layer {layer}: lse error {lerr}"


def tidal_seqs(client, rng) -> Seqs:
    """Four sessions, topk-pages (a quarter of the pages, a sink page) on
    layer 0 and given-pages on every later layer, 300 tokens each."""
    table = [attnd.PolicyRule(1, client.model.n_layers, attnd.Policy.given_pages())]
    seqs = Seqs(client, 4, rng, policy="topk-pages,fraction=0.25,sink=16", policy_table=table)
    seqs.prefill(300)
    return seqs


def tidal_pipeline(client, rng, form: str) -> None:
    """TidalDecode pipelined over 2 decode steps: two micro-batches
    (sessions 0-1 and 2-3). async: both always in flight; when micro-batch
    A's layer l is waited, its layer l + 1 starts with the Selection A's
    layer 0 returned while B's layer l is still out. stream: the same
    requests in turn on one AttendStream. Layer 0 chooses a quarter of the
    pages with the sink and the newest; every later layer attends exactly
    those (it reports them back); every output equals float64 attention
    over the pages reported."""
    seqs = tidal_seqs(client, rng)
    L = client.model.n_layers
    batches = ([0, 1], [2, 3])
    stream = client.stream() if form == "stream" else None

    def start(k, layer, given):
        idx = batches[k]
        q, kv = seqs.make_q(2), seqs.make_kv(2)
        pos = [seqs.mirror.length(seqs.ids[i], layer) for i in idx]
        args = (layer, [seqs.sessions[i] for i in idx], q)
        kw = dict(new_kv=kv, positions=pos, return_lse=True, given=given, return_pages=True)
        if stream is not None:
            return q, kv, stream.attend(*args, **kw)
        return q, kv, client.attend_async(*args, **kw)

    for step in range(2):
        sel0 = [None, None]
        pending = [start(k, 0, None) for k in (0, 1)] if stream is None else [None, None]
        for layer in range(L):
            for k in (0, 1):
                if stream is not None:
                    pending[k] = start(k, layer, sel0[k])
                q, kv, res = pending[k]
                out, lse, sel = res if stream is not None else res.wait()
                seqs.record(batches[k], layer, kv)
                assert isinstance(sel, attnd.Selection) and sel.n_seqs == 2 and not sel.tokens
                if layer == 0:
                    n = n_pages(seqs, batches[k][0], 0)
                    for i in range(2):
                        for g in range(sel.groups):
                            lst = sel.list(i, g)
                            assert len(lst) == max(-(-n // 4), 2)
                            assert lst[0] == 0 and lst[-1] == n - 1  # sink, newest
                    sel0[k] = sel
                else:
                    assert sel == sel0[k]  # exactly the pages given (the newest among them)
                check_batch(seqs, batches[k], layer, q, out, lse, sel)
                if stream is None and layer + 1 < L:
                    pending[k] = start(k, layer + 1, sel0[k])
    if stream is not None:
        stream.close()


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("transport", ["grpc", "ucx"])
@pytest.mark.parametrize("form", ["async", "stream"])
def test_a_pipelined_tidaldecode_loop_gives_layer_0s_pages_to_every_later_layer(
        start_server, connect, rng, model, transport, form):
    """tidal_pipeline against a lone worker, gRPC and UCX."""
    srv = start_server("--model", model, "--page-size", str(PS), "--ucx-listen", "auto")
    client = connect(srv.target, transport=transport)
    tidal_pipeline(client, rng, form)
    assert client.stats().select_calls == 2 * 2  # layer 0 of both micro-batches, 2 steps


@pytest.mark.parametrize("form", ["async", "stream"])
def test_a_pipelined_tidaldecode_loop_on_a_head_sharded_group_equals_a_lone_worker(
        start_group, connect, rng, form):
    """tidal_pipeline through rank 1 of a 2-rank head-sharded tiny-gqa group
    (each rank one KV head, selecting as a lone worker does)."""
    g = start_group(2, "--model", "tiny-gqa", "--page-size", str(PS), "--shard", "head")
    tidal_pipeline(connect(g.ranks[1].target), rng, form)


def refusals(seqs: Seqs, layer: int, given, field: str):
    """The same bad sparse Attend as a blocking call, an async call (raised
    by its wait) and on a fresh stream: InvalidArgumentError naming field,
    the same message from all three; the stream ends with it."""
    q, kv = seqs.make_q(2), seqs.make_kv(2)
    pos = [seqs.mirror.length(sid, layer) for sid in seqs.ids]
    args, kw = (layer, seqs.sessions, q), dict(new_kv=kv, positions=pos, given=given)
    e0 = expect(attnd.InvalidArgumentError, field, seqs.c.attend, *args, **kw)
    call = seqs.c.attend_async(*args, **kw)  # sent: the server's refusal comes with the reply
    e1 = expect(attnd.InvalidArgumentError, field, call.wait)
    st = seqs.c.stream()
    e2 = expect(attnd.InvalidArgumentError, field, st.attend, *args, **kw)
    assert e0.message == e1.message == e2.message
    e3 = expect(attnd.InvalidArgumentError, field, st.attend, *args, **kw)  # the stream ended
    assert e3.message == e0.message
    st.close()  # raises nothing more: the failure was raised already


@pytest.mark.parametrize("transport", ["grpc", "ucx"])
def test_bad_given_indices_raise_alike_from_attend_async_and_stream(start_server, connect, rng,
                                                                     transport):
    srv = start_server("--model", "tiny-gqa", "--page-size", str(PS), "--ucx-listen", "auto")
    client = connect(srv.target, transport=transport)
    L = client.model.n_layers
    seqs = Seqs(client, 2, rng, policy=attnd.Policy.full(),
                policy_table=[attnd.PolicyRule(1, L, attnd.Policy.given_pages())])
    seqs.prefill(100)  # 7 pages once the step's token lands
    refusals(seqs, 0, [[0, 1], [2]], "given_idx[0]")  # a full layer takes no indices
    refusals(seqs, 1, [[3, 9], [1]], "given_idx[1]")  # out of range
    refusals(seqs, 1, [[4, 2], [1]], "given_idx[1]")  # not ascending
    refusals(seqs, 1, None, "given_idx")  # a given-pages layer without indices
    refusals(seqs, 1, [[[1], [2], [3]], [[1], [2], [3]]], "given_groups")  # 2 KV heads
    # refused before sending: a Python error naming the argument; the stream goes on
    q = seqs.make_q(2)
    expect(ValueError, "chosen_capacity", client.attend_async, 1, seqs.sessions, q,
           given=[[1], [2]], return_pages=True)
    with client.stream() as st:
        expect(ValueError, "given[0]", st.attend, 1, seqs.sessions, q, given=[[-1], [2]])
        # a reply larger than the chosen buffers: libattnd's error naming them
        expect(attnd.InvalidArgumentError, "chosen_capacity", st.attend, 1, seqs.sessions, q,
               given=[[1], [2]], return_pages=True, chosen_capacity=1)
    expect(attnd.InvalidArgumentError, "chosen_capacity",
           client.attend_async(1, seqs.sessions, q, given=[[1], [2]], return_pages=True,
                               chosen_capacity=1).wait)
    # nothing was appended: every session decodes on at position 100
    for layer in range(L):
        given = None if layer == 0 else [[1, 3], [0]]
        q, out, lse, sel = decode(seqs, layer, given=given, return_pages=True)
        want = [[np.arange(7)]] * 2 if layer == 0 else [[[1, 3, 6]], [[0, 6]]]
        assert sel.groups == 1
        for i in range(2):
            np.testing.assert_array_equal(sel.list(i), want[i][0])
        check_subset(seqs, layer, q, out, lse, lambda i: want[i] * client.model.n_kv_heads)
    for sid in seqs.ids:
        assert seqs.mirror.length(sid, 0) == 101
