"""Hugging Face transformers models with their attention on attnd.

``Offload(model, client)`` replaces the forward of every attention module
of a transformers causal LM with one that keeps the model's own projections,
RoPE and output projection and sends attention to attnd:

- prefill (``Offload.prefill``): attention over the prompt is computed
  locally (causal, exact) and the prompt's KV, the model's own projections,
  goes to attnd with AppendKV (one chunk per sequence and layer);
- decode (``Offload.step``): each layer sends the new tokens' queries and
  KV entries (Attend with positions: the worker appends, then attends) and
  continues from attnd's output.

Two attention families, recognized by their submodules:

- GQA (Llama and its relatives: ``q_proj``/``k_proj``/``v_proj``/``o_proj``):
  queries [B, Hq, D] after RoPE, KV entries [B, 2, Hkv, D] (K after RoPE,
  then V).
- MLA (DeepSeek-V3: ``kv_a_proj_with_mqa``, ``kv_b_proj``...): the absorbed
  form. The cache entry is the normalized latent c (kv_lora_rank) next to
  the RoPE key (qk_rope_head_dim); the query is q_nope . W_UK per head next
  to q_pe; attnd returns softmax . c per head and the client applies W_UV
  (kv_b_proj's value rows), or with ``up_project=True`` a worker group does
  (W_UV loaded once per layer with LoadWeights).

The served attnd preset must match the model (head counts and widths, at
least as many layers, and the softmax scale, which the model's attention
modules carry as ``scaling``); ``Offload`` checks that and raises
ValueError otherwise. Sequences of a batch are of equal length (no padding:
the attention mask is not consulted). The HF model's own KV cache is not
used (``use_cache=False``): attnd holds the KV. Works on the module
attributes that transformers 4.5x and 5.x share; torch tensors on any
device (attnd's buffers are host memory: CUDA tensors are copied).
"""

from __future__ import annotations

import functools
from typing import Any, Dict, List, Optional

import torch

from .client import AttnKind, Client, KVChunk

_WIRE = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}


def _rope_half(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, T, H, d]; cos/sin [B, T, d] (both halves equal): pairs (i, i + d/2)."""
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
    d = x.shape[-1]
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def _rope_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """DeepSeek's layout: pairs (2i, 2i + 1), each rotated by angle i; the
    result lists the rotated first members, then the second (any layout
    works as long as queries and keys share it)."""
    d = x.shape[-1]
    cos, sin = cos[..., : d // 2].unsqueeze(2), sin[..., : d // 2].unsqueeze(2)
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.cat((a * cos - b * sin, b * cos + a * sin), dim=-1)


def _causal_softmax(scores: torch.Tensor) -> torch.Tensor:
    """scores [B, H, T, T] -> causal softmax in float32."""
    T = scores.shape[-1]
    mask = torch.ones(T, T, dtype=torch.bool, device=scores.device).triu(1)
    return torch.softmax(scores.float().masked_fill(mask, float("-inf")), dim=-1)


def _find_attention(model: torch.nn.Module) -> List[torch.nn.Module]:
    """The attention modules, in layer order."""
    found = []
    for m in model.modules():
        if not hasattr(m, "layer_idx") or not hasattr(m, "o_proj"):
            continue
        if hasattr(m, "kv_a_proj_with_mqa") or all(hasattr(m, a) for a in ("q_proj", "k_proj",
                                                                             "v_proj")):
            found.append(m)
    found.sort(key=lambda m: m.layer_idx)
    return found


class Offload:
    """Attention of a transformers causal LM on attnd (see the module doc).

    clients: the Client, or several (ranks of a group; requests go to them
    in turn, any rank can lead). wire_dtype: how queries, new KV and outputs
    travel (torch.float32 by default; the model computes in its own dtype).
    up_project: MLA on a worker group: W_UV applied by the group.

        with attnd.hf.Offload(model, client) as off:
            off.start(batch=input_ids.shape[0])
            logits = off.prefill(input_ids)          # [B, vocab], last prompt token
            for _ in range(n):
                tok = logits.argmax(-1, keepdim=True)
                logits = off.step(tok)
    """

    def __init__(self, model: torch.nn.Module, clients: Any, *,
                 wire_dtype: torch.dtype = torch.float32, up_project: bool = False):
        self.model = model
        self.clients: List[Client] = list(clients) if isinstance(clients, (list, tuple)) else [clients]
        self.wire = _WIRE[wire_dtype]
        self.wire_dtype = wire_dtype
        self.up_project = up_project
        self.attn = _find_attention(model)
        if not self.attn:
            raise ValueError("no attention module with q/k/v or MLA projections found")
        self.kind = AttnKind.MLA if hasattr(self.attn[0], "kv_a_proj_with_mqa") else AttnKind.GQA
        extra = [a for a in ("q_norm", "k_norm", "sliding_window")
                 if getattr(self.attn[0], a, None) is not None]
        if extra:  # Qwen3-style per-head norms, sliding windows: not modelled here
            raise ValueError(f"attention modules with {', '.join(extra)} are not supported")
        self.info = self.clients[0].model
        self._check()
        self.sessions: List[Any] = []
        self.length = 0
        self.mode = "idle"
        self._turn = 0
        self._saved: Dict[int, Any] = {}
        for m in self.attn:
            self._saved[id(m)] = m.forward
            fwd = self._mla_forward if self.kind == AttnKind.MLA else self._gqa_forward
            m.forward = functools.partial(fwd, m)

    # ---- checks and set-up ---------------------------------------------------

    def _check(self) -> None:
        info, m0, cfg = self.info, self.attn[0], self.attn[0].config
        want = {"kind": self.kind, "n_layers>=": len(self.attn),
                "n_q_heads": cfg.num_attention_heads}
        got = {"kind": info.kind, "n_layers>=": info.n_layers, "n_q_heads": info.n_q_heads}
        if self.kind == AttnKind.MLA:
            want.update(d_latent=cfg.kv_lora_rank, d_rope=cfg.qk_rope_head_dim)
            got.update(d_latent=info.d_latent, d_rope=info.d_rope)
        else:
            want.update(n_kv_heads=cfg.num_key_value_heads, head_dim=m0.head_dim)
            got.update(n_kv_heads=info.n_kv_heads, head_dim=info.head_dim)
        bad = [f"{k}: model {want[k]}, attnd {got[k]}" for k in want
               if (got[k] < want[k] if k.endswith(">=") else got[k] != want[k])]
        scale = float(m0.scaling)
        if abs(info.scale - scale) > 1e-6 * scale:
            bad.append(f"scale: model {scale:.9g}, attnd {info.scale:.9g}")
        if bad:
            raise ValueError(f"attnd serves {info.name}, which does not match the model: "
                             + "; ".join(bad))

    def start(self, batch: int, max_tokens: int = 0) -> None:
        """Open one session per sequence of the batch (closing earlier ones)
        and, with up_project, load every layer's W_UV into the group."""
        self.end()
        self.sessions = [self.clients[0].create_session(max_tokens) for _ in range(batch)]
        self.length = 0
        if self.up_project:
            for m in self.attn:
                w_uv = self._w_uv(m).permute(0, 2, 1).float().contiguous()  # [H, c, v]
                for c in self.clients:  # each client learns the projected width
                    c.load_weights(m.layer_idx, w_uv)

    def end(self) -> None:
        """Close the sessions."""
        for s in self.sessions:
            s.close()
        self.sessions = []

    def restore(self) -> None:
        """Put the model's own attention back."""
        for m in self.attn:
            if id(m) in self._saved:
                m.forward = self._saved.pop(id(m))

    def close(self) -> None:
        self.end()
        self.restore()

    def __enter__(self) -> "Offload":
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self.end()
        finally:
            self.restore()

    # ---- running the model -------------------------------------------------------

    @torch.inference_mode()
    def prefill(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The prompt [B, T] through the model (local causal attention, its
        KV appended to attnd); logits of the last prompt token [B, vocab]."""
        if not self.sessions:
            self.start(input_ids.shape[0])
        self.mode = "prefill"
        try:
            out = self.model(input_ids=input_ids, use_cache=False)
        finally:
            self.mode = "idle"
        self.length += input_ids.shape[1]
        return out.logits[:, -1]

    @torch.inference_mode()
    def step(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Decode the next tokens [B, S] (S > 1: several query tokens, causal
        among themselves) with attention on attnd; logits of the last [B, vocab]."""
        B, S = input_ids.shape
        pos = torch.arange(self.length, self.length + S, device=input_ids.device)
        self.mode = "decode"
        try:
            out = self.model(input_ids=input_ids, position_ids=pos.expand(B, S), use_cache=False)
        finally:
            self.mode = "idle"
        self.length += S
        return out.logits[:, -1]

    # ---- attnd calls ---------------------------------------------------------------

    def _client(self) -> Client:
        c = self.clients[self._turn % len(self.clients)]
        self._turn += 1
        return c

    def _append(self, layer: int, entries: torch.Tensor) -> None:
        """entries [B, T, entry...] of one layer -> AppendKV at self.length."""
        e = entries.detach().to(self.wire_dtype)
        self.clients[0].append_kv([KVChunk(s, layer, self.length, e[b])
                                   for b, s in enumerate(self.sessions)])

    def _attend(self, layer: int, q: torch.Tensor, entries: torch.Tensor) -> torch.Tensor:
        """q [B, S, H, d_k], entries [B, S, entry...] -> out [B, S, H, d_v] (float)."""
        B, S = q.shape[:2]
        if S == 1:
            q, entries = q[:, 0], entries[:, 0]
        out = self._client().attend(layer, self.sessions, q.detach().to(self.wire_dtype),
                                    new_kv=entries.detach().to(self.wire_dtype),
                                    positions=[self.length] * B, up_project=self.up_project)
        out = out.float()
        return out.unsqueeze(1) if S == 1 else out

    # ---- the replaced forwards ---------------------------------------------------------

    def _gqa_forward(self, mod: torch.nn.Module, hidden_states: torch.Tensor,
                     position_embeddings: Any = None, attention_mask: Any = None, **kw: Any):
        B, T, _ = hidden_states.shape
        D = mod.head_dim
        q = mod.q_proj(hidden_states).view(B, T, -1, D)
        k = mod.k_proj(hidden_states).view(B, T, -1, D)
        v = mod.v_proj(hidden_states).view(B, T, -1, D)
        cos, sin = position_embeddings
        q, k = _rope_half(q, cos, sin), _rope_half(k, cos, sin)
        entries = torch.stack((k, v), dim=2)  # [B, T, 2, Hkv, D]
        if self.mode == "decode":
            o = self._attend(mod.layer_idx, q, entries).to(hidden_states.dtype)
        elif self.mode == "prefill":
            g = q.shape[2] // k.shape[2]
            kk, vv = k.repeat_interleave(g, dim=2), v.repeat_interleave(g, dim=2)
            p = _causal_softmax(torch.einsum("bqhd,bkhd->bhqk", q, kk) * mod.scaling)
            o = torch.einsum("bhqk,bkhd->bqhd", p.to(vv.dtype), vv)
            self._append(mod.layer_idx, entries)
        else:
            raise RuntimeError("run the model through Offload.prefill / Offload.step")
        return mod.o_proj(o.reshape(B, T, -1)), None

    @staticmethod
    def _w_kvb(mod: torch.nn.Module) -> torch.Tensor:
        """kv_b_proj's weight as [H, nope + v, kv_lora]."""
        return mod.kv_b_proj.weight.view(mod.config.num_attention_heads, -1,
                                         mod.config.kv_lora_rank)

    def _w_uv(self, mod: torch.nn.Module) -> torch.Tensor:
        return self._w_kvb(mod)[:, mod.config.qk_nope_head_dim:]  # [H, v, c]

    def _mla_forward(self, mod: torch.nn.Module, hidden_states: torch.Tensor,
                     position_embeddings: Any = None, attention_mask: Any = None, **kw: Any):
        cfg = mod.config
        B, T, _ = hidden_states.shape
        H, nope, r, c_dim = (cfg.num_attention_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim,
                             cfg.kv_lora_rank)
        if getattr(mod, "q_a_proj", None) is not None:
            q = mod.q_b_proj(mod.q_a_layernorm(mod.q_a_proj(hidden_states)))
        else:
            q = mod.q_proj(hidden_states)
        q = q.view(B, T, H, nope + r)
        q_nope, q_pe = q[..., :nope], q[..., nope:]
        ckv = mod.kv_a_proj_with_mqa(hidden_states)
        c = mod.kv_a_layernorm(ckv[..., :c_dim])
        k_pe = ckv[..., c_dim:].unsqueeze(2)  # [B, T, 1, r]
        cos, sin = position_embeddings
        rope = _rope_interleaved if getattr(cfg, "rope_interleave", False) else _rope_half
        q_pe, k_pe = rope(q_pe, cos, sin), rope(k_pe, cos, sin)[:, :, 0]
        entries = torch.cat((c, k_pe), dim=-1)  # [B, T, c + r]
        w = self._w_kvb(mod)
        w_uk, w_uv = w[:, :nope], w[:, nope:]  # [H, nope, c], [H, v, c]
        if self.mode == "decode":
            q_abs = torch.cat((torch.einsum("bthn,hnc->bthc", q_nope, w_uk), q_pe), dim=-1)
            lat = self._attend(mod.layer_idx, q_abs, entries)
            if self.up_project:
                o = lat
            else:
                o = torch.einsum("bthc,hvc->bthv", lat.to(w_uv.dtype), w_uv)
            o = o.to(hidden_states.dtype)
        elif self.mode == "prefill":
            k_nope = torch.einsum("btc,hnc->bthn", c, w_uk)
            v = torch.einsum("btc,hvc->bthv", c, w_uv)
            s = (torch.einsum("bqhn,bkhn->bhqk", q_nope, k_nope) +
                 torch.einsum("bqhr,bkr->bhqk", q_pe, k_pe)) * mod.scaling
            o = torch.einsum("bhqk,bkhv->bqhv", _causal_softmax(s).to(v.dtype), v)
            self._append(mod.layer_idx, entries)
        else:
            raise RuntimeError("run the model through Offload.prefill / Offload.step")
        return mod.o_proj(o.reshape(B, T, -1)), None


def greedy(model: torch.nn.Module, input_ids: torch.Tensor, n: int,
           offload: Optional[Offload] = None, forced: Optional[torch.Tensor] = None):
    """Greedy-decode n tokens after the prompt [B, T]: (tokens [B, n], logits
    [B, n, vocab] float32). offload None: the model as it is (each step
    runs the whole sequence: no cache to differ by); else through the Offload. forced [B, n]: feed these
    tokens instead of the argmax (teacher forcing)."""
    with torch.inference_mode():
        if offload is None:  # the unmodified model, the whole sequence each step
            seq, toks, logits = input_ids, [], []
            for i in range(n):
                lg = model(input_ids=seq, use_cache=False).logits[:, -1].float()
                tok = forced[:, i] if forced is not None else lg.argmax(-1)
                toks.append(tok)
                logits.append(lg)
                seq = torch.cat((seq, tok[:, None]), dim=1)
            return torch.stack(toks, 1), torch.stack(logits, 1)
        offload.start(input_ids.shape[0])
        lg = offload.prefill(input_ids)
        toks, logits = [], []
        for i in range(n):
            logits.append(lg.float())
            tok = forced[:, i] if forced is not None else lg.argmax(-1)
            toks.append(tok)
            if i + 1 < n:
                lg = offload.step(tok[:, None])
        return torch.stack(toks, 1), torch.stack(logits, 1)
