"""Helpers of the binding tests: sessions whose KV a Mirror records, fresh
random prefill and decode steps, each output checked against float64.

Random values are drawn float32 in [-1, 1) (queries scaled by 2 so that the
softmax is not flat); what travels in bf16 travels as numpy uint16 bits.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np

import attnd
from reference import Mirror, check_step


def rand(rng: np.random.Generator, shape: Sequence[int], dt: attnd.DType = attnd.DType.F32,
         scale: float = 1.0) -> np.ndarray:
    """Fresh uniform values of `shape` in dtype dt (bf16 as uint16 bits)."""
    x = (rng.random(tuple(shape), dtype=np.float32) * 2 - 1) * scale
    if dt == attnd.DType.BF16:
        return attnd.to_bf16(x)
    if dt == attnd.DType.F16:
        return x.astype(np.float16)
    return x


class Seqs:
    """n sessions of one client with a mirror of their KV (session_kw:
    create_session's, e.g. a sparse policy)."""

    def __init__(self, client: attnd.Client, n: int, rng: np.random.Generator,
                 dt: attnd.DType = attnd.DType.F32, max_tokens: int = 0, **session_kw):
        self.c = client
        self.rng = rng
        self.dt = dt
        self.sessions: List[attnd.Session] = [client.create_session(max_tokens, **session_kw)
                                              for _ in range(n)]
        self.m = self.sessions[0].model
        self.mirror = Mirror(self.m)

    @property
    def ids(self) -> List[bytes]:
        return [s.id for s in self.sessions]

    def entry(self) -> tuple:
        return self.mirror.entry_shape()

    def prefill(self, tokens: int, chunks: Sequence[int] = (7, 64, 1)) -> None:
        """tokens fresh entries into every layer of every session, over one
        AppendKV call, in chunks cycling through `chunks`."""
        todo = []
        for s in self.sessions:
            for layer in range(self.m.n_layers):
                base, done, k = self.mirror.length(s.id, layer), 0, 0
                while done < tokens:
                    t = min(chunks[k % len(chunks)], tokens - done)
                    kv = rand(self.rng, (t,) + self.entry(), self.dt)
                    todo.append((attnd.KVChunk(s, layer, base + done, kv), s.id, layer, kv))
                    done += t
                    k += 1
        assert self.c.append_kv([t[0] for t in todo]) == len(todo)
        for _, sid, layer, kv in todo:
            self.mirror.append(sid, layer, kv)

    def make_q(self, n: int, S: int = 1) -> np.ndarray:
        shape = (n, S, self.m.n_q_heads, self.m.d_k) if S > 1 else (n, self.m.n_q_heads, self.m.d_k)
        return rand(self.rng, shape, self.dt, scale=2.0)

    def make_kv(self, n: int, S: int = 1) -> np.ndarray:
        shape = (n, S) + self.entry() if S > 1 else (n,) + self.entry()
        return rand(self.rng, shape, self.dt)

    def record(self, idx: Sequence[int], layer: int, kv: Optional[np.ndarray], S: int = 1) -> None:
        if kv is None:
            return
        for j, i in enumerate(idx):
            self.mirror.append(self.ids[i], layer, kv[j] if S > 1 else kv[j:j + 1])

    def step(self, layer: int, idx: Optional[Sequence[int]] = None, S: int = 1,
             with_kv: bool = True, want_lse: bool = True, api=None, **kw) -> float:
        """One checked Attend for sessions idx (default all): fresh q, new
        KV with positions; api(layer, sessions, q, **kw) defaults to the
        client's attend. Returns the worst error."""
        idx = list(range(len(self.sessions))) if idx is None else list(idx)
        q = self.make_q(len(idx), S)
        kv = self.make_kv(len(idx), S) if with_kv else None
        pos = [self.mirror.length(self.ids[i], layer) for i in idx] if with_kv else None
        call = api or self.c.attend
        res = call(layer, [self.sessions[i] for i in idx], q, new_kv=kv, positions=pos,
                   return_lse=want_lse, **kw)
        out, lse = res if want_lse else (res, None)
        self.record(idx, layer, kv, S)
        out_dt = attnd.tensors.dtype_of(kw["out_dtype"]) if kw.get("out_dtype") else self.dt
        return check_step(self.mirror, [self.ids[i] for i in idx], layer, q, out, lse, out_dt)

    def close(self) -> None:
        for s in self.sessions:
            s.close()
