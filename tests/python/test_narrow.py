"""The narrow MLA wire through the binding (issue 12 item 2): load W_UK and
W_UV with Client.load_weights, send per-head queries [.., Hq, d_nope + d_rope]
with q_form="heads" and get [.., Hq, d_v] back; every output checked against
the float64 narrow formula (reference.narrow_ref) on fresh random inputs, over
gRPC and UCX, sync, async and stream, on a lone worker and a 2-rank group;
and the refusals name q_form."""

from __future__ import annotations

import numpy as np
import pytest

import attnd
from helpers import Seqs, rand
from reference import BOUND, LSE_BOUND, max_row_err, narrow_ref, wire_value

D_NOPE, D_V = 24, 40  # tiny-mla: Hq 8, d_latent 64, d_rope 16; distinct widths


def weights(rng, m, dt=attnd.DType.F32):
    """Fresh W_UK [Hq, d_nope, d_c] and W_UV [Hq, d_c, d_v] (scaled so that
    the absorbed query and the values stay near 1)."""
    w_uk = rand(rng, (m.n_q_heads, D_NOPE, m.d_latent), dt, scale=0.5)
    w_uv = rand(rng, (m.n_q_heads, m.d_latent, D_V), dt, scale=0.5)
    return w_uk, w_uv


def heads_step(seqs, layer, w_uk, w_uv, api, S=1, out_dtype=None):
    """One checked heads-form Attend for every session (fresh q and new KV
    at the right positions); asserts the bound of the output dtype."""
    m, n = seqs.m, len(seqs.sessions)
    rows = (n, S, m.n_q_heads) if S > 1 else (n, m.n_q_heads)
    q = rand(seqs.rng, rows + (D_NOPE + m.d_rope,), seqs.dt, scale=2.0)
    kv = seqs.make_kv(n, S)
    pos = [seqs.mirror.length(sid, layer) for sid in seqs.ids]
    kw = {"out_dtype": out_dtype} if out_dtype is not None else {}
    out, lse = api(layer, seqs.sessions, q, new_kv=kv, positions=pos, return_lse=True,
                   q_form="heads", **kw)
    assert out.shape == rows + (D_V,) and lse.shape == rows
    seqs.record(range(n), layer, kv, S)
    qv, outv = wire_value(q), attnd.as_float32(out).astype(np.float64)
    lsev = attnd.as_float32(lse).astype(np.float64)
    if S == 1:
        qv, outv, lsev = qv[:, None], outv[:, None], lsev[:, None]
    bound = BOUND[attnd.tensors.dtype_of(out_dtype) if out_dtype is not None else seqs.dt]
    for i, sid in enumerate(seqs.ids):
        ro, rl = narrow_ref(seqs.mirror, sid, layer, qv[i], wire_value(w_uk), wire_value(w_uv))
        err = max_row_err(outv[i], ro)
        assert err <= bound, f"session {i} layer {layer}: out error {err}"
        lerr = float(np.abs(lsev[i] - rl).max() / max(1.0, np.abs(rl).max()))
        assert lerr <= LSE_BOUND, f"session {i} layer {layer}: lse error {lerr}"


@pytest.mark.parametrize("transport", ["grpc", "ucx"])
def test_heads_form_matches_the_f64_narrow_reference(start_server, connect, rng, transport):
    srv = start_server("--model", "tiny-mla", "--ucx-listen", "auto")
    c = connect(srv.target, transport=transport)
    seqs = Seqs(c, 3, rng)
    seqs.prefill(21)
    m = seqs.m
    for layer in range(m.n_layers):
        w_uk, w_uv = weights(rng, m)
        held = c.load_weights(layer, w_uv, w_uk=w_uk)
        assert held == m.n_q_heads * m.d_latent * (D_NOPE + D_V) * 4
        heads_step(seqs, layer, w_uk, w_uv, c.attend)
        heads_step(seqs, layer, w_uk, w_uv, lambda *a, **k: c.attend_async(*a, **k).wait())
        heads_step(seqs, layer, w_uk, w_uv, c.attend, S=3)
        with c.stream() as st:
            heads_step(seqs, layer, w_uk, w_uv, st.attend)


def test_heads_form_in_bf16_with_bf16_weights_is_within_the_bf16_bound(start_server, connect,
                                                                      rng):
    c = connect(start_server("--model", "tiny-mla").target)
    seqs = Seqs(c, 2, rng, dt=attnd.DType.BF16)
    seqs.prefill(17)
    w_uk, w_uv = weights(rng, seqs.m, attnd.DType.BF16)
    # bf16 weights are kept as bf16: half the bytes of float32
    assert c.load_weights(2, w_uv, w_uk=w_uk) == \
        seqs.m.n_q_heads * seqs.m.d_latent * (D_NOPE + D_V) * 2
    heads_step(seqs, 2, w_uk, w_uv, c.attend)
    heads_step(seqs, 2, w_uk, w_uv, c.attend, out_dtype=attnd.DType.F32)


def test_heads_form_on_a_sequence_group_of_two_matches(start_group, connect, rng):
    g = start_group(2, "--model", "tiny-mla")
    c = connect(g.ranks[1].target)
    seqs = Seqs(c, 2, rng)
    seqs.prefill(19)
    w_uk, w_uv = weights(rng, seqs.m)
    c.load_weights(0, w_uv, w_uk=w_uk)  # through rank 1: every rank gets its part
    for _ in range(3):  # the new tokens land on both ranks over the steps
        heads_step(seqs, 0, w_uk, w_uv, c.attend)
    # rank 0 leads too; a load through it replaces every rank's part with
    # the same matrices (and tells this client d_v)
    c0 = connect(g.ranks[0].target)
    c0.load_weights(0, w_uv, w_uk=w_uk)
    heads_step(seqs, 0, w_uk, w_uv, c0.attend)


def test_heads_form_without_weights_is_failed_precondition_naming_q_form(start_server, connect,
                                                                         rng):
    c = connect(start_server("--model", "tiny-mla").target)
    seqs = Seqs(c, 1, rng)
    seqs.prefill(5)
    m = seqs.m
    q = rand(rng, (1, m.n_q_heads, D_NOPE + m.d_rope))
    kv = seqs.make_kv(1)
    out = np.empty((1, m.n_q_heads, D_V), dtype=np.float32)
    with pytest.raises(attnd.FailedPreconditionError, match="q_form.*neither"):
        c.attend(0, seqs.sessions, q, new_kv=kv, positions=[5], q_form="heads", out=out)
    # W_UV alone is not enough for the heads form
    c.load_weights(0, rand(rng, (m.n_q_heads, m.d_latent, D_V)))
    with pytest.raises(attnd.FailedPreconditionError, match="q_form.*W_UV only"):
        c.attend(0, seqs.sessions, q, new_kv=kv, positions=[5], q_form=attnd.QForm.HEADS)
    # the refused calls appended nothing: an absorbed step lands at 5
    seqs.step(0)


def test_heads_form_on_a_gqa_worker_is_refused_naming_q_form(start_server, connect, rng):
    c = connect(start_server("--model", "tiny-gqa").target)
    with c.session() as s:
        s.append_kv(0, rand(rng, (4, 2, 2, 32)))
        q = rand(rng, (1, 8, 32))
        with pytest.raises(attnd.FailedPreconditionError, match="q_form.*GQA"):
            c.attend(0, [s], q, q_form="heads", out=np.empty((1, 8, 32), np.float32))


def test_an_unknown_q_form_name_is_a_value_error(start_server, connect, rng):
    c = connect(start_server("--model", "tiny-mla").target)
    with pytest.raises(ValueError, match="q_form"):
        c.attend(0, [bytes(16)], rand(rng, (1, 8, 80)), q_form="narrow")
    with pytest.raises(ValueError, match="w_uv, w_uk"):
        c.load_weights(0)
