"""Two tiny transformer language models written in numpy, independent of
attnd, for the fidelity test (test_fidelity.py).

``TinyMLA`` has DeepSeek-V3's attention architecture (multi-head latent
attention): a low-rank query path (q_a -> RMSNorm -> q_b, q_lora 96), a
compressed KV path (kv_a -> latent c of kv_lora 512 with RMSNorm, plus a
64-wide RoPE key shared by all heads, RoPE on interleaved pairs), per-head
up-projections W_UK / W_UV (kv_b), qk_nope 128 + qk_rope 64 (softmax scale
1/sqrt(192)), v_head 128, 4 heads, 3 layers; a SwiGLU MLP, RMSNorm before
each block, a final norm and an LM head. Its local attention is the
textbook form (keys and values expanded per head from the cached latents:
k_nope = c W_UK, v = c W_UV); the offloaded one is the absorbed form that
attnd serves (the query is q_nope W_UK^T next to q_pe, the worker returns
softmax . c per head, and the client applies W_UV).

``TinyLlama`` is a Llama-architecture model with grouped-query attention:
8 query heads, 2 KV heads, head_dim 32, RoPE (rotate-half), 3 layers.

The shapes equal attnd's presets ``tiny-mla512`` and ``tiny-gqa``. All
arithmetic is float64; what goes to attnd is float32; KV caches hold what a
bf16 KV cache would (the local path rounds its cache as the server does),
so the two paths differ only by the attention arithmetic. Weights are
random (std 1/sqrt(fan_in), so activations and attention scores are O(1)).

A model exposes, per layer: ``project(layer, x, pos)`` -> (query parts,
KV entry [n, entry...] float32); ``local_attention(layer, q, cache)`` ->
per-head outputs [n, H, v] from a list of cached entries per sequence;
``wire_query`` / ``from_wire`` for the attnd path; ``finish(layer, x, o)``
(output projection, residual, MLP) and ``logits(x)``.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np


def rmsnorm(x: np.ndarray, w: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def rope_angles(pos: np.ndarray, dim: int, theta: float = 10000.0) -> Tuple[np.ndarray, np.ndarray]:
    """cos and sin [n, dim/2] of positions pos [n]."""
    inv = theta ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)
    ang = np.asarray(pos, dtype=np.float64)[:, None] * inv[None, :]
    return np.cos(ang), np.sin(ang)


def rope_half(x: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """RoPE, Llama's layout: dims i and i + dim/2 form a pair. x [n, ..., dim]."""
    d = x.shape[-1]
    cos, sin = rope_angles(pos, d)
    shape = (x.shape[0],) + (1,) * (x.ndim - 2) + (d // 2,)
    cos, sin = cos.reshape(shape), sin.reshape(shape)
    a, b = x[..., : d // 2], x[..., d // 2:]
    return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)


def rope_pairs(x: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """RoPE, DeepSeek's layout: dims (2i, 2i + 1) form a pair; the result
    keeps the pairs interleaved. x [n, ..., dim]."""
    d = x.shape[-1]
    cos, sin = rope_angles(pos, d)
    shape = (x.shape[0],) + (1,) * (x.ndim - 2) + (d // 2,)
    cos, sin = cos.reshape(shape), sin.reshape(shape)
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = a * cos - b * sin
    out[..., 1::2] = b * cos + a * sin
    return out


def softmax_rows(s: np.ndarray) -> np.ndarray:
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


class _Base:
    vocab = 512
    d_model = 256
    d_ffn = 512
    n_layers = 3

    def _w(self, rng: np.random.Generator, *shape: int) -> np.ndarray:
        return rng.standard_normal(shape) / np.sqrt(shape[0])

    def _common(self, rng: np.random.Generator) -> None:
        self.embed = rng.standard_normal((self.vocab, self.d_model))
        self.head = self._w(rng, self.d_model, self.vocab)
        self.final_norm = 1 + 0.1 * rng.standard_normal(self.d_model)
        self.mlp = [(1 + 0.1 * rng.standard_normal(self.d_model), self._w(rng, self.d_model, self.d_ffn),
                     self._w(rng, self.d_model, self.d_ffn), self._w(rng, self.d_ffn, self.d_model))
                    for _ in range(self.n_layers)]

    def embed_tokens(self, tokens: Sequence[int]) -> np.ndarray:
        return self.embed[np.asarray(tokens)]

    def finish(self, layer: int, x: np.ndarray, o: np.ndarray) -> np.ndarray:
        """Output projection + residual, then the MLP block. o [n, H, v]."""
        x = x + o.reshape(o.shape[0], -1) @ self.wo[layer]
        norm, gate, up, down = self.mlp[layer]
        h = rmsnorm(x, norm)
        return x + (silu(h @ gate) * (h @ up)) @ down

    def logits(self, x: np.ndarray) -> np.ndarray:
        return rmsnorm(x, self.final_norm) @ self.head


class TinyMLA(_Base):
    """DeepSeek-V3-style MLA model (preset tiny-mla512)."""
    preset = "tiny-mla512"
    n_heads = 4
    q_lora = 96
    kv_lora = 512
    d_rope = 64
    d_nope = 128
    d_v = 128
    scale = 1.0 / np.sqrt(128 + 64)

    def __init__(self, rng: np.random.Generator):
        H, L = self.n_heads, self.n_layers
        self._common(rng)
        self.attn_norm = [1 + 0.1 * rng.standard_normal(self.d_model) for _ in range(L)]
        self.q_a = [self._w(rng, self.d_model, self.q_lora) for _ in range(L)]
        self.q_a_norm = [1 + 0.1 * rng.standard_normal(self.q_lora) for _ in range(L)]
        self.q_b = [self._w(rng, self.q_lora, H * (self.d_nope + self.d_rope)) for _ in range(L)]
        self.kv_a = [self._w(rng, self.d_model, self.kv_lora + self.d_rope) for _ in range(L)]
        self.kv_a_norm = [1 + 0.1 * rng.standard_normal(self.kv_lora) for _ in range(L)]
        kv_b = [self._w(rng, self.kv_lora, H * (self.d_nope + self.d_v)).reshape(
            self.kv_lora, H, self.d_nope + self.d_v) for _ in range(L)]
        self.w_uk = [w[:, :, :self.d_nope] for w in kv_b]  # [c, H, nope]
        self.w_uv = [w[:, :, self.d_nope:] for w in kv_b]  # [c, H, v]
        self.wo = [self._w(rng, H * self.d_v, self.d_model) for _ in range(L)]

    def project(self, layer: int, x: np.ndarray, pos: np.ndarray):
        """((q_nope [n, H, nope], q_pe [n, H, rope]), entry [n, kv_lora + rope] f32)."""
        n = x.shape[0]
        h = rmsnorm(x, self.attn_norm[layer])
        q = (rmsnorm(h @ self.q_a[layer], self.q_a_norm[layer]) @ self.q_b[layer]).reshape(
            n, self.n_heads, self.d_nope + self.d_rope)
        q_nope, q_pe = q[..., :self.d_nope], rope_pairs(q[..., self.d_nope:], pos)
        ckv = h @ self.kv_a[layer]
        c = rmsnorm(ckv[:, :self.kv_lora], self.kv_a_norm[layer])
        k_pe = rope_pairs(ckv[:, self.kv_lora:], pos)
        return (q_nope, q_pe), np.concatenate([c, k_pe], axis=1).astype(np.float32)

    def local_attention(self, layer: int, q, caches: List[np.ndarray]) -> np.ndarray:
        """Textbook MLA: keys/values expanded per head from the cached latents."""
        q_nope, q_pe = q
        out = np.zeros((len(caches), self.n_heads, self.d_v))
        for i, cache in enumerate(caches):
            c, k_pe = cache[:, :self.kv_lora], cache[:, self.kv_lora:]
            T, H = c.shape[0], self.n_heads
            k_nope = (c @ self.w_uk[layer].reshape(self.kv_lora, -1)).reshape(T, H, self.d_nope)
            v = (c @ self.w_uv[layer].reshape(self.kv_lora, -1)).reshape(T, H, self.d_v)
            s = (np.einsum("hn,thn->ht", q_nope[i], k_nope) + q_pe[i] @ k_pe.T) * self.scale
            out[i] = np.einsum("ht,thv->hv", softmax_rows(s), v)
        return out

    def absorbed_query(self, layer: int, q) -> np.ndarray:
        """[n, H, kv_lora + rope] float64: q_nope W_UK^T next to q_pe."""
        q_nope, q_pe = q
        q_c = np.einsum("nhd,chd->nhc", q_nope, self.w_uk[layer], optimize=True)
        return np.concatenate([q_c, q_pe], axis=-1)

    def wire_query(self, layer: int, q) -> np.ndarray:
        return self.absorbed_query(layer, q).astype(np.float32)

    def from_wire(self, layer: int, out: np.ndarray, projected: bool = False) -> np.ndarray:
        """attnd's output [n, H, kv_lora] (latent) -> [n, H, v]; projected:
        already [n, H, v] (a group applied W_UV)."""
        out = np.asarray(out, dtype=np.float64)
        return out if projected else np.einsum("nhc,chv->nhv", out, self.w_uv[layer],
                                               optimize=True)

    def w_uv_for_attnd(self, layer: int) -> np.ndarray:
        """W_UV as LoadWeights takes it: [H, kv_lora, v] float32."""
        return np.ascontiguousarray(self.w_uv[layer].transpose(1, 0, 2)).astype(np.float32)

    def latent_reference(self, layer: int, q, cache: np.ndarray, i: int) -> np.ndarray:
        """Exact absorbed attention of sequence i: softmax . c per head [H, kv_lora]."""
        qa = self.absorbed_query(layer, q)[i]
        s = (qa @ cache.T) * self.scale
        return softmax_rows(s) @ cache[:, :self.kv_lora]


class TinyLlama(_Base):
    """Llama-architecture GQA model (preset tiny-gqa)."""
    preset = "tiny-gqa"
    n_heads = 8
    n_kv_heads = 2
    head_dim = 32
    d_v = 32
    scale = 1.0 / np.sqrt(32)

    def __init__(self, rng: np.random.Generator):
        L, D = self.n_layers, self.head_dim
        self._common(rng)
        self.attn_norm = [1 + 0.1 * rng.standard_normal(self.d_model) for _ in range(L)]
        self.wq = [self._w(rng, self.d_model, self.n_heads * D) for _ in range(L)]
        self.wk = [self._w(rng, self.d_model, self.n_kv_heads * D) for _ in range(L)]
        self.wv = [self._w(rng, self.d_model, self.n_kv_heads * D) for _ in range(L)]
        self.wo = [self._w(rng, self.n_heads * D, self.d_model) for _ in range(L)]

    def project(self, layer: int, x: np.ndarray, pos: np.ndarray):
        """(q [n, Hq, D], entry [n, 2, Hkv, D] f32: K then V)."""
        n, D = x.shape[0], self.head_dim
        h = rmsnorm(x, self.attn_norm[layer])
        q = rope_half((h @ self.wq[layer]).reshape(n, self.n_heads, D), pos)
        k = rope_half((h @ self.wk[layer]).reshape(n, self.n_kv_heads, D), pos)
        v = (h @ self.wv[layer]).reshape(n, self.n_kv_heads, D)
        return q, np.stack([k, v], axis=1).astype(np.float32)

    def local_attention(self, layer: int, q: np.ndarray, caches: List[np.ndarray]) -> np.ndarray:
        """Grouped-query attention: query head h reads KV head h // 4."""
        g = self.n_heads // self.n_kv_heads
        out = np.zeros((len(caches), self.n_heads, self.head_dim))
        for i, cache in enumerate(caches):
            k = np.repeat(cache[:, 0], g, axis=1)  # [T, Hq, D]
            v = np.repeat(cache[:, 1], g, axis=1)
            s = np.einsum("hd,thd->ht", q[i], k) * self.scale
            out[i] = np.einsum("ht,thd->hd", softmax_rows(s), v)
        return out

    def wire_query(self, layer: int, q: np.ndarray) -> np.ndarray:
        return q.astype(np.float32)

    def from_wire(self, layer: int, out: np.ndarray, projected: bool = False) -> np.ndarray:
        return np.asarray(out, dtype=np.float64)
