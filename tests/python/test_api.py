"""Every public call of the binding against a real attnd, outputs checked
against the float64 reference (reference.py): control calls, AppendKV,
Attend (sync, async with timing, stream) for GQA and MLA, dtypes, multi-token
queries, LSE, caller buffers, non-contiguous inputs, W_UV up-projection on a
group, the UCX transport."""

from __future__ import annotations

import numpy as np
import pytest

import attnd
from helpers import Seqs, rand
from reference import check_step, max_row_err


def test_the_library_is_found_and_its_path_reported():
    assert "libattnd" in attnd.library_path()


def test_health_is_serving_and_an_unknown_service_is_not_found(start_server, connect):
    c = connect(start_server("--model", "tiny-gqa").target)
    assert c.health() is True
    assert c.health("attnd.v1.Attnd") is True
    with pytest.raises(attnd.NotFoundError) as e:
        c.health("no.such.Service")
    assert e.value.code is attnd.StatusCode.NOT_FOUND


def test_model_info_describes_the_served_preset(start_server, connect):
    c = connect(start_server("--model", "tiny-mla").target)
    m = c.model
    assert (m.name, m.kind, m.n_layers, m.n_q_heads) == ("tiny-mla", attnd.AttnKind.MLA, 4, 8)
    assert (m.d_latent, m.d_rope, m.d_k, m.d_v, m.kv_token_elems) == (64, 16, 80, 64, 80)
    assert m.kv_dtype == attnd.DType.BF16
    g = connect(start_server("--model", "tiny-gqa", "--kv-dtype", "f32").target).model
    assert (g.kind, g.n_q_heads, g.n_kv_heads, g.head_dim) == (attnd.AttnKind.GQA, 8, 2, 32)
    assert (g.d_k, g.d_v, g.kv_token_elems, g.kv_dtype) == (32, 32, 128, attnd.DType.F32)
    assert abs(g.scale - 32 ** -0.5) < 1e-7


def test_stats_count_sessions_reservations_and_calls(start_server, connect, rng):
    c = connect(start_server("--model", "tiny-gqa").target)
    before = c.stats()
    assert (before.sessions, before.attend_calls, before.group_size) == (0, 0, 0)
    seqs = Seqs(c, 2, rng, max_tokens=200)
    seqs.prefill(10)
    seqs.step(0)
    st = c.stats()
    assert st.sessions == 2
    assert st.pages_reserved > 0
    assert st.attend_calls == 1 and st.attend_sequences == 2
    assert st.tokens_appended == 2 * 3 * 10 + 2  # the prefill and the step's new KV
    assert st.model.name == "tiny-gqa"
    seqs.close()
    assert c.stats().sessions == 0


@pytest.mark.parametrize("model", ["tiny-gqa", "tiny-mla", "tiny-mla512"])
def test_decode_steps_match_the_float64_reference(start_server, connect, rng, model):
    c = connect(start_server("--model", model).target)
    seqs = Seqs(c, 3, rng)
    seqs.prefill(70)
    for _ in range(3):
        for layer in range(seqs.m.n_layers):
            seqs.step(layer)
    # a batch that is a subset, in another order, without new KV
    seqs.step(1, idx=[2, 0], with_kv=False)


@pytest.mark.parametrize("dt,out_dt", [(attnd.DType.BF16, None), (attnd.DType.F16, None),
                                       (attnd.DType.BF16, "f32"), (attnd.DType.F32, "bf16")])
def test_bf16_and_f16_travel_as_numpy_arrays(start_server, connect, rng, dt, out_dt):
    c = connect(start_server("--model", "tiny-gqa").target)
    seqs = Seqs(c, 2, rng, dt=dt)
    seqs.prefill(33)
    q = seqs.make_q(2)
    kv = seqs.make_kv(2)
    out = c.attend(0, seqs.sessions, q, new_kv=kv, positions=[33, 33], out_dtype=out_dt)
    want = attnd.tensors.dtype_of(out_dt) if out_dt else dt
    assert out.dtype == {attnd.DType.BF16: np.uint16, attnd.DType.F16: np.float16,
                         attnd.DType.F32: np.float32}[want]
    seqs.record([0, 1], 0, kv)
    check_step(seqs.mirror, seqs.ids, 0, q, out, None, want)


def test_multi_token_queries_follow_the_causal_rule(start_server, connect, rng):
    c = connect(start_server("--model", "tiny-mla").target)
    seqs = Seqs(c, 2, rng)
    seqs.prefill(20)
    for layer in range(seqs.m.n_layers):
        seqs.step(layer, S=4)
    out = c.attend(0, seqs.sessions, seqs.make_q(2, S=3))
    assert out.shape == (2, 3, seqs.m.n_q_heads, seqs.m.d_v)


def test_lse_and_outputs_go_into_caller_buffers(start_server, connect, rng):
    c = connect(start_server("--model", "tiny-gqa").target)
    seqs = Seqs(c, 2, rng)
    seqs.prefill(12)
    m = seqs.m
    out = np.full((2, m.n_q_heads, m.d_v), np.nan, dtype=np.float32)
    lse = np.full((2, m.n_q_heads), np.nan, dtype=np.float32)
    q = seqs.make_q(2)
    got_out, got_lse = c.attend(2, seqs.sessions, q, out=out, lse=lse)
    assert got_out is out and got_lse is lse
    check_step(seqs.mirror, seqs.ids, 2, q, out, lse)


def test_a_too_small_out_buffer_is_refused_before_sending(start_server, connect, rng):
    c = connect(start_server("--model", "tiny-gqa").target)
    seqs = Seqs(c, 1, rng)
    seqs.prefill(5)
    with pytest.raises(attnd.InvalidArgumentError, match="out_capacity"):
        c.attend(0, seqs.sessions, seqs.make_q(1), new_kv=seqs.make_kv(1), positions=[5],
                 out=np.empty(7, np.float32))
    assert c.stats().attend_calls == 0  # nothing went out, nothing was appended
    seqs.step(0)


def test_non_contiguous_inputs_give_the_same_result(start_server, connect, rng):
    c = connect(start_server("--model", "tiny-gqa").target)
    seqs = Seqs(c, 2, rng)
    seqs.prefill(9)
    m = seqs.m
    q = seqs.make_q(2)
    q_t = np.ascontiguousarray(q.transpose(1, 0, 2)).transpose(1, 0, 2)  # same values, strided
    assert not q_t.flags.c_contiguous
    a = c.attend(1, seqs.sessions, q)
    b = c.attend(1, seqs.sessions, q_t)
    assert np.array_equal(a, b)
    kv = seqs.make_kv(2)
    kv_big = np.zeros((2, 2, 2, m.n_kv_heads, m.head_dim), np.float32)
    kv_big[:, 1] = kv
    out = c.attend(1, seqs.sessions, q, new_kv=kv_big[:, 1], positions=[9, 9])
    seqs.record([0, 1], 1, kv)
    check_step(seqs.mirror, seqs.ids, 1, q, out)


def test_unsupported_dtypes_are_type_errors_naming_the_argument(start_server, connect, rng):
    c = connect(start_server("--model", "tiny-gqa").target)
    with c.session() as s:
        with pytest.raises(TypeError, match="q: numpy dtype float64"):
            c.attend(0, [s], np.zeros((1, 8, 32)))
        with pytest.raises(TypeError, match="new_kv"):
            c.attend(0, [s], np.zeros((1, 8, 32), np.float32), new_kv=np.zeros((1, 128), np.int32))


def test_bf16_conversion_rounds_to_nearest_even():
    x = np.array([1.0, 1.00390625, 1.01171875, -2.5, np.inf, 3.0e38], np.float32)
    bits = attnd.to_bf16(x)
    # 1 + 2^-8 is a tie: to the even 1.0; 1 + 3*2^-8 rounds up to 1 + 2^-6
    assert list(attnd.from_bf16(bits)[:4]) == [1.0, 1.0, 1.015625, -2.5]
    assert np.isinf(attnd.from_bf16(bits)[4])
    assert np.isnan(attnd.from_bf16(attnd.to_bf16(np.array([np.nan], np.float32))))[0]
    y = np.random.default_rng(1).standard_normal(1000).astype(np.float32)
    assert np.abs(attnd.from_bf16(attnd.to_bf16(y)) - y).max() <= np.abs(y).max() * 2 ** -8


def test_async_calls_return_results_and_server_timing(start_server, connect, rng):
    c = connect(start_server("--model", "tiny-mla").target)
    seqs = Seqs(c, 3, rng)
    seqs.prefill(40)
    calls = []
    for layer in range(seqs.m.n_layers):  # all layers in flight at once
        q, kv = seqs.make_q(3), seqs.make_kv(3)
        pos = [seqs.mirror.length(i, layer) for i in seqs.ids]
        calls.append((layer, q, kv, c.attend_async(layer, seqs.sessions, q, new_kv=kv,
                                                   positions=pos, return_lse=True)))
    for layer, q, kv, call in calls:
        out, lse = call.wait()
        seqs.record(range(3), layer, kv)
        check_step(seqs.mirror, seqs.ids, layer, q, out, lse)
        assert call.timing is not None and call.timing.kernel_ns > 0
        with pytest.raises(ValueError, match="already waited"):
            call.wait()


def test_a_stream_runs_a_decode_loop(start_server, connect, rng):
    c = connect(start_server("--model", "tiny-gqa").target)
    seqs = Seqs(c, 2, rng)
    seqs.prefill(16)
    with c.stream() as st:
        for _ in range(4):
            for layer in range(seqs.m.n_layers):
                seqs.step(layer, api=st.attend)
    assert c.stats().attend_calls == 4 * seqs.m.n_layers


def test_append_kv_is_all_or_nothing(start_server, connect, rng):
    c = connect(start_server("--model", "tiny-gqa").target)
    with c.session() as s:
        kv = rand(rng, (4, 2, 2, 32))
        chunks = [(s, 0, 0, kv), (s, 0, 4, kv), (s, 0, 99, kv), (s, 0, 8, kv)]
        with pytest.raises(attnd.FailedPreconditionError, match="start") as e:
            c.append_kv(chunks)
        assert e.value.applied == 0
        assert c.stats().tokens_appended == 0
        # none was applied: the same call, corrected, lands at 0
        chunks[2] = (s, 0, 8, kv)
        chunks[3] = (s, 0, 12, kv)
        assert c.append_kv(chunks) == 4
        assert c.stats().tokens_appended == 16


def test_gqa_kv_may_be_sent_flat_per_token(start_server, connect, rng):
    c = connect(start_server("--model", "tiny-gqa").target)
    seqs = Seqs(c, 1, rng)
    kv = rand(rng, (6, 2 * 2 * 32))
    seqs.sessions[0].append_kv(0, kv)
    seqs.mirror.append(seqs.ids[0], 0, kv)
    seqs.step(0)


def test_up_projection_with_loaded_w_uv_on_a_group_of_one(start_group, connect, rng):
    g = start_group(1, "--model", "tiny-mla")
    c = connect(g.ranks[0].target)
    seqs = Seqs(c, 2, rng)
    seqs.prefill(30)
    m = seqs.m
    d_vo = 24
    w = rand(rng, (m.n_q_heads, m.d_latent, d_vo))
    assert c.load_weights(1, w) == m.n_q_heads * m.d_latent * d_vo * 4
    q = seqs.make_q(2)
    out = c.attend(1, seqs.sessions, q, up_project=True)
    assert out.shape == (2, m.n_q_heads, d_vo)
    for i, sid in enumerate(seqs.ids):
        lat, _ = seqs.mirror.attend_ref(sid, 1, q[i][None].astype(np.float64))
        ref = np.einsum("hc,hcv->hv", lat[0], w.astype(np.float64))
        assert max_row_err(out[i], ref) <= 1e-5


def test_up_projection_on_a_lone_worker_matches_and_gqa_refuses_weights(start_server, connect,
                                                                         rng):
    # a lone MLA worker holds W_UV too (the narrow wire, issue 12): up_project
    # works there as on a group; a GQA worker has no latent to project
    c = connect(start_server("--model", "tiny-mla").target)
    seqs = Seqs(c, 2, rng)
    seqs.prefill(30)
    m = seqs.m
    d_vo = 16
    w = rand(rng, (m.n_q_heads, m.d_latent, d_vo))
    assert c.load_weights(0, w) == m.n_q_heads * m.d_latent * d_vo * 4
    q = seqs.make_q(2)
    out = c.attend(0, seqs.sessions, q, up_project=True)
    assert out.shape == (2, m.n_q_heads, d_vo)
    for i, sid in enumerate(seqs.ids):
        lat, _ = seqs.mirror.attend_ref(sid, 0, q[i][None].astype(np.float64))
        ref = np.einsum("hc,hcv->hv", lat[0], w.astype(np.float64))
        assert max_row_err(out[i], ref) <= 1e-5
    g = connect(start_server("--model", "tiny-gqa").target)
    with pytest.raises(attnd.FailedPreconditionError):
        g.load_weights(0, rand(rng, (8, 32, 16)))


def test_the_ucx_transport_gives_the_same_outputs(start_server, connect, rng):
    srv = start_server("--model", "tiny-mla", "--ucx-listen", "auto")
    c = connect(srv.target, transport="ucx")
    assert c.transport is attnd.Transport.UCX
    seqs = Seqs(c, 2, rng)
    seqs.prefill(25)
    for layer in range(seqs.m.n_layers):
        seqs.step(layer)
        seqs.step(layer, api=lambda *a, **k: c.attend_async(*a, **k).wait())
    with c.stream() as st:
        seqs.step(0, api=st.attend)


def test_ucx_without_a_server_listener_is_unavailable(start_server):
    srv = start_server("--model", "tiny-gqa")
    with pytest.raises(attnd.UnavailableError):
        attnd.Client(srv.target, transport=attnd.Transport.UCX, connect_timeout_ms=30000)


def test_an_unknown_model_name_is_invalid_and_another_preset_failed_precondition(
        start_server, connect):
    c = connect(start_server("--model", "tiny-gqa").target)
    with pytest.raises(attnd.InvalidArgumentError, match="model"):
        c.create_session(model="gpt-9")
    with pytest.raises(attnd.FailedPreconditionError, match="model"):
        c.create_session(model="tiny-mla")
    with c.session(model="tiny-gqa") as s:
        assert s.model.name == "tiny-gqa"


def test_torch_tensors_go_in_and_come_out_as_torch(start_server, connect, rng):
    torch = pytest.importorskip("torch")
    c = connect(start_server("--model", "tiny-mla").target)
    seqs = Seqs(c, 2, rng)
    seqs.prefill(11)
    m = seqs.m
    q32 = torch.from_numpy(seqs.make_q(2))
    kv32 = torch.from_numpy(seqs.make_kv(2))
    out, lse = c.attend(0, seqs.sessions, q32, new_kv=kv32, positions=[11, 11], return_lse=True)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    assert out.shape == (2, m.n_q_heads, m.d_v) and lse.shape == (2, m.n_q_heads)
    seqs.record([0, 1], 0, kv32.numpy())
    check_step(seqs.mirror, seqs.ids, 0, q32.numpy(), out.numpy(), lse.numpy())
    # bfloat16 in (a non-contiguous view, copied), bfloat16 out
    qb = torch.from_numpy(seqs.make_q(2)).to(torch.bfloat16)
    qb_t = qb.transpose(0, 1).contiguous().transpose(0, 1)
    assert not qb_t.is_contiguous()
    outb = c.attend(1, seqs.sessions, qb_t)
    assert outb.dtype == torch.bfloat16
    check_step(seqs.mirror, seqs.ids, 1, qb.float().numpy(), outb.float().numpy(),
               None, attnd.DType.BF16)
    # a caller's torch buffer is written in place
    buf = torch.full((2, m.n_q_heads, m.d_v), float("nan"))
    assert c.attend(1, seqs.sessions, q32, out=buf) is buf
    check_step(seqs.mirror, seqs.ids, 1, q32.numpy(), buf.numpy())
