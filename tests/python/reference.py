"""float64 references for the Python tests: exact attention over a mirror
of the KV a test sent, and the checks that compare attnd's answers with it.

``Mirror`` keeps, per session and layer, the KV entries as the server
stores them (rounded to the served KV dtype: bf16 unless --kv-dtype says
otherwise), in float64. ``attend_ref`` is the contract of attnd/
client.h written out: GQA query head h reads KV head h / (Hq / Hkv); MLA
scores are (q_c . c + q_r . k_rope) * scale over the shared latent entry
and the output is softmax . c; with S query tokens, token s sees the
layer's first L - (S - 1 - s) entries (L counted after the append); lse is
the natural log of the softmax denominator of the scaled scores.

``max_row_err`` is the normwise relative error per output row (as
tests/group's gt_max_row_err): max |got - ref| / max |ref|, the worst row.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np

import attnd

BOUND = {attnd.DType.F32: 1e-5, attnd.DType.F16: 1e-3, attnd.DType.BF16: 1e-2}
LSE_BOUND = 1e-5


def stored(x: np.ndarray, kv_dtype: attnd.DType) -> np.ndarray:
    """x as the server stores it (rounded to kv_dtype), in float64."""
    x = np.asarray(x, dtype=np.float32)
    if kv_dtype == attnd.DType.BF16:
        x = attnd.from_bf16(attnd.to_bf16(x))
    elif kv_dtype == attnd.DType.F16:
        x = x.astype(np.float16).astype(np.float32)
    return x.astype(np.float64)


def wire_value(x: np.ndarray) -> np.ndarray:
    """What a query array means on the wire, in float64 (uint16 = bf16 bits)."""
    return attnd.as_float32(x).astype(np.float64)


class Mirror:
    """The KV of some sessions of one model, as the server holds it."""

    def __init__(self, model: attnd.ModelInfo):
        self.m = model
        self.kv: Dict[Tuple[bytes, int], List[np.ndarray]] = {}

    def entry_shape(self) -> Tuple[int, ...]:
        m = self.m
        if m.kind == attnd.AttnKind.MLA:
            return (m.d_latent + m.d_rope,)
        return (2, m.n_kv_heads, m.head_dim)

    def length(self, sid: bytes, layer: int) -> int:
        return len(self.kv.get((sid, layer), []))

    def append(self, sid: bytes, layer: int, entries: np.ndarray) -> None:
        """Record entries [T, entry...] (any wire dtype) appended to a layer."""
        e = stored(attnd.as_float32(entries), self.m.kv_dtype).reshape((-1,) + self.entry_shape())
        self.kv.setdefault((sid, layer), []).extend(list(e))

    def attend_ref(self, sid: bytes, layer: int, q: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """out [S, Hq, d_v] and lse [S, Hq] for one session's query [S, Hq, d_k]
        (float64), over the KV recorded so far (the step's new KV included)."""
        m = self.m
        cache = np.array(self.kv[(sid, layer)])
        L = cache.shape[0]
        S = q.shape[0]
        out = np.zeros((S, m.n_q_heads, m.d_v))
        lse = np.zeros((S, m.n_q_heads))
        for s in range(S):
            vis = L - (S - 1 - s)
            c = cache[:vis]
            for h in range(m.n_q_heads):
                if m.kind == attnd.AttnKind.MLA:
                    sc = (c @ q[s, h]) * m.scale
                    val = c[:, :m.d_latent]
                else:
                    g = h // (m.n_q_heads // m.n_kv_heads)
                    sc = (c[:, 0, g] @ q[s, h]) * m.scale
                    val = c[:, 1, g]
                mx = sc.max()
                p = np.exp(sc - mx)
                out[s, h] = p @ val / p.sum()
                lse[s, h] = mx + np.log(p.sum())
        return out, lse


def narrow_ref(mirror: Mirror, sid: bytes, layer: int, q: np.ndarray, w_uk: np.ndarray,
               w_uv: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The narrow MLA wire's out [S, Hq, d_v] and lse [S, Hq] for one
    session's heads-form query q [S, Hq, d_nope + d_rope] (float64): per head
    the absorbed query (q_nope . W_UK[h], q_rope) attends as attend_ref does
    and the latent output is up-projected, out[h] = o[h] . W_UV[h];
    W_UK [Hq, d_nope, d_c], W_UV [Hq, d_c, d_v] float64."""
    d_nope = w_uk.shape[1]
    q_c = np.einsum("shn,hnc->shc", q[..., :d_nope], w_uk)
    lat, lse = mirror.attend_ref(sid, layer, np.concatenate((q_c, q[..., d_nope:]), axis=-1))
    return np.einsum("shc,hcv->shv", lat, w_uv), lse


def subset_ref(mirror: Mirror, sid: bytes, layer: int, q: np.ndarray, lists, tokens: bool = False
               ) -> Tuple[np.ndarray, np.ndarray]:
    """Sparse attention's out [Hq, d_v] and lse [Hq] for one session's
    one-token query q [Hq, d_k] (float64): with len(lists) groups (1: every
    head; GQA Hkv: the query heads reading KV head g), group g attends only
    the tokens of lists[g], logical pages (page j = tokens [j * page_size,
    (j + 1) * page_size)) or, when tokens, token positions."""
    m = mirror.m
    cache = np.array(mirror.kv[(sid, layer)])
    L, ps, groups = cache.shape[0], m.page_size, len(lists)
    per = m.n_q_heads // groups
    out = np.zeros((m.n_q_heads, m.d_v))
    lse = np.zeros(m.n_q_heads)
    for g, lst in enumerate(lists):
        lst = np.asarray(lst, dtype=np.int64)
        idx = lst if tokens else np.concatenate(
            [np.arange(p * ps, min((p + 1) * ps, L)) for p in lst] or [np.zeros(0, np.int64)])
        sub = Mirror(m)
        sub.kv[(sid, layer)] = list(cache[idx])
        o, lz = sub.attend_ref(sid, layer, q[None])
        out[g * per:(g + 1) * per] = o[0, g * per:(g + 1) * per]
        lse[g * per:(g + 1) * per] = lz[0, g * per:(g + 1) * per]
    return out, lse


def max_row_err(got: np.ndarray, ref: np.ndarray) -> float:
    """Worst per-row normwise relative error over the last axis (inf for NaN)."""
    got = np.asarray(got, dtype=np.float64).reshape(-1, ref.shape[-1])
    ref = np.asarray(ref, dtype=np.float64).reshape(-1, ref.shape[-1])
    if np.isnan(got).any():
        return float("inf")
    num = np.abs(got - ref).max(axis=1)
    den = np.abs(ref).max(axis=1)
    return float(np.max(np.where(den > 0, num / np.where(den > 0, den, 1), num)))


def check_step(mirror: Mirror, sids: List[bytes], layer: int, q: np.ndarray, out, lse=None,
               out_dtype: attnd.DType = attnd.DType.F32) -> float:
    """Compare one Attend's results with the reference for every session
    (q [n, (S,) Hq, d_k] as sent; out/lse as returned); asserts the
    dtype's bound and returns the worst error."""
    qv = wire_value(q)
    outv = attnd.as_float32(out).astype(np.float64)
    if qv.ndim == 3:
        qv, outv = qv[:, None], outv[:, None]
        lsev = None if lse is None else attnd.as_float32(lse)[:, None]
    else:
        lsev = None if lse is None else attnd.as_float32(lse)
    worst = 0.0
    for i, sid in enumerate(sids):
        ro, rl = mirror.attend_ref(sid, layer, qv[i])
        err = max_row_err(outv[i], ro)
        assert err <= BOUND[out_dtype], f"session {i} layer {layer}: out error {err}"
        worst = max(worst, err)
        if lsev is not None:
            lerr = float(np.abs(lsev[i] - rl).max() / max(1.0, np.abs(rl).max()))
            assert lerr <= LSE_BOUND, f"session {i} layer {layer}: lse error {lerr}"
    return worst
