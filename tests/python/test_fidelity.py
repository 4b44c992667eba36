"""Fidelity: a model decodes the same tokens with its attention on attnd.

Two tiny models written in numpy (tiny_models.py: a DeepSeek-V3-style MLA
model and a Llama-style GQA model, random weights) greedily decode 32
tokens after a 16-token prompt, for a batch of 2 sequences, twice: with
local attention (their own KV cache, rounded to bf16 as attnd stores it),
and with attention offloaded to attnd: the prompt is prefilled locally and
its KV, the model's own projections, goes to attnd by AppendKV; then every
decode step and layer sends the new token's query and KV entry (Attend with
positions) and continues from attnd's output (MLA: the absorbed form, latent
output times W_UV on the client, or W_UV on a group with up_project).

Asserted, for a lone worker (unary, stream, two micro-batches in flight
through asyncio) and 2-rank groups (sequence sharding for both models, head
sharding for GQA; requests led by alternating ranks): identical token ids,
and logits within 1e-3 of the local run (relative to the largest logit;
queries and outputs travel float32, so the two runs differ by float32
rounding, which a bf16 KV cache amplifies when an entry computed from a
slightly different hidden state rounds the other way: up to 7.7e-5 seen in
120 runs). A greedy token may differ only where the local model's top-2
logits were within 1e-3 of each other (a tie either side of which is
right); the comparison then stops for that sequence, and it is printed.
With bf16 on the wire: teacher-forced logits within bf16 tolerance (1e-2)
and the same argmax wherever the local top-2 margin exceeds twice the
observed error. For a 2-rank latent (TPLA) group the error is printed, not
asserted: TPLA is an approximation.
"""

from __future__ import annotations

import asyncio
from typing import Dict, List, Optional, Tuple

import numpy as np
import pytest

import attnd
from conftest import DEADLINES
from reference import stored
from tiny_models import TinyLlama, TinyMLA

PROMPT, NEW, BATCH = 16, 32, 2
KV_DT = attnd.DType.BF16


class LocalAttention:
    """The model's own attention over its own (bf16-rounded) KV cache."""

    def __init__(self, model):
        self.model = model
        self.cache: Dict[Tuple[int, int], List[np.ndarray]] = {}

    def add(self, layer: int, idx: List[int], entries: np.ndarray) -> None:
        for j, i in enumerate(idx):
            self.cache.setdefault((i, layer), []).append(stored(entries[j], KV_DT))

    def caches(self, layer: int, idx: List[int]) -> List[np.ndarray]:
        return [np.array(self.cache[(i, layer)]) for i in idx]

    def start(self, layer, idx, q, entries, pos):
        self.add(layer, idx, entries)
        return self.model.local_attention(layer, q, self.caches(layer, idx))

    def finish(self, handle):
        return handle


class OffloadAttention:
    """The same attention on attnd: AppendKV for the prompt, then Attend
    with the new entry at its position. api: "sync", "stream" or "async"
    (attend_async, awaited later: micro-batches in flight). clients: one per
    rank reached; requests go to them in turn (any rank of a group leads).
    wire: the dtype of queries and outputs on the wire. up_project: W_UV on
    the group (MLA). tpla: also compute the exact latent output and record
    TPLA's error (latent groups)."""

    def __init__(self, model, clients: List[attnd.Client], api: str = "sync",
                 wire: attnd.DType = attnd.DType.F32, up_project: bool = False,
                 tpla: bool = False):
        self.model, self.clients, self.api, self.wire = model, clients, api, wire
        self.up_project, self.tpla = up_project, tpla
        self.sessions = [clients[0].create_session(PROMPT + NEW + 8) for _ in range(BATCH)]
        self.streams = [c.stream() for c in clients] if api == "stream" else None
        self.turn = 0
        self.shadow = LocalAttention(model) if tpla else None
        self.tpla_err: List[float] = []
        if up_project:  # through every client: each learns the projected width
            for c in clients:
                for layer in range(model.n_layers):
                    c.load_weights(layer, model.w_uv_for_attnd(layer))

    def prefill(self, prompt_cache: LocalAttention) -> None:
        chunks = []
        for (i, layer), entries in sorted(prompt_cache.cache.items()):
            chunks.append(attnd.KVChunk(self.sessions[i], layer, 0,
                                        np.array(entries, dtype=np.float32)))
            if self.shadow is not None:
                self.shadow.cache[(i, layer)] = list(entries)
        assert self.clients[0].append_kv(chunks) == len(chunks)

    def _q(self, layer, q):
        qw = self.model.wire_query(layer, q)
        return attnd.to_bf16(qw) if self.wire == attnd.DType.BF16 else qw

    def start(self, layer, idx, q, entries, pos):
        k = self.turn % len(self.clients)
        self.turn += 1
        args = dict(new_kv=entries, positions=[int(p) for p in pos], up_project=self.up_project)
        sess = [self.sessions[i] for i in idx]
        if self.shadow is not None:
            self.shadow.add(layer, idx, entries)
            for j, i in enumerate(idx):
                cache = self.shadow.caches(layer, [i])[0]
                self._exact = getattr(self, "_exact", {})
                self._exact[(layer, i)] = self.model.latent_reference(layer, q, cache, j)
        if self.api == "stream":
            out = self.streams[k].attend(layer, sess, self._q(layer, q), **args)
        elif self.api == "async":
            return layer, idx, self.clients[k].attend_async(layer, sess, self._q(layer, q), **args)
        else:
            out = self.clients[k].attend(layer, sess, self._q(layer, q), **args)
        return layer, idx, out

    def finish(self, handle):
        layer, idx, out = handle
        if isinstance(out, attnd.Call):
            raise TypeError("async handles are finished by the async driver")
        return self._convert(layer, idx, out)

    def _convert(self, layer, idx, out):
        out = attnd.as_float32(out)
        if self.tpla:
            for j, i in enumerate(idx):
                ex = self._exact[(layer, i)]
                num = np.linalg.norm(out[j] - ex, axis=-1)
                self.tpla_err.extend((num / np.linalg.norm(ex, axis=-1)).tolist())
        return self.model.from_wire(layer, out, projected=self.up_project)

    def close(self) -> None:
        for s in self.streams or []:
            s.close()
        for s in self.sessions:
            s.close()


def run_prefill(model, prompts: np.ndarray):
    """The prompt through the model with local attention: (the KV cache,
    the hidden state of the last prompt token)."""
    local = LocalAttention(model)
    idx = list(range(BATCH))
    x = None
    for t in range(PROMPT):
        x = model.embed_tokens(prompts[:, t])
        pos = np.full(BATCH, t)
        for layer in range(model.n_layers):
            q, e = model.project(layer, x, pos)
            x = model.finish(layer, x, local.start(layer, idx, q, e, pos))
    return local, x


def decode(model, prompts: np.ndarray, attn_for_decode=None, micro_batches=1,
           forced: Optional[np.ndarray] = None):
    """Greedy decode NEW tokens; attention by LocalAttention, or by
    attn_for_decode after a local prefill. forced: feed these tokens
    instead of the argmax (teacher forcing). Returns (tokens, logits)."""
    local, x = run_prefill(model, prompts)
    attn = local
    if attn_for_decode is not None:
        attn_for_decode.prefill(local)
        attn = attn_for_decode
    tokens = np.zeros((BATCH, NEW), dtype=np.int64)
    logits = np.zeros((BATCH, NEW, model.vocab))
    mbs = np.array_split(np.arange(BATCH), micro_batches)
    for step in range(NEW):
        lg = model.logits(x)
        logits[:, step] = lg
        tokens[:, step] = forced[:, step] if forced is not None else lg.argmax(axis=1)
        x = model.embed_tokens(tokens[:, step])
        pos = np.full(BATCH, PROMPT + step)
        if getattr(attn, "api", None) == "async":
            x = asyncio.run(_layers_async(model, attn, x, pos, mbs))
            continue
        for layer in range(model.n_layers):
            handles = []
            for mb in mbs:
                q, e = model.project(layer, x[mb], pos[mb])
                handles.append(attn.start(layer, list(mb), q, e, pos[mb]))
            for mb, h in zip(mbs, handles):
                x[mb] = model.finish(layer, x[mb], attn.finish(h))
    return tokens, logits


async def _layers_async(model, attn: OffloadAttention, x, pos, mbs):
    """One decode step over every layer, micro-batches pipelined: each
    micro-batch's Attend is in flight while the next one's projections are
    computed; awaiting does not block the event loop."""
    x = x.copy()

    async def run(mb):
        for layer in range(model.n_layers):
            q, e = model.project(layer, x[mb], pos[mb])
            _, idx, call = attn.start(layer, list(mb), q, e, pos[mb])
            out = await call
            x[mb] = model.finish(layer, x[mb], attn._convert(layer, idx, out))

    await asyncio.gather(*(run(mb) for mb in mbs))
    return x


def rel_logit_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


MODELS = {"mla": TinyMLA, "gqa": TinyLlama}


@pytest.fixture
def setup(rng):
    def make(arch: str):
        model = MODELS[arch](rng)
        prompts = rng.integers(0, model.vocab, size=(BATCH, PROMPT))
        return model, prompts
    return make


LOGIT_BOUND = 1e-3  # f32 on the wire; see the module docstring
TIE = 1e-3  # a top-2 margin below this (relative) is a tie rounding may break


def _compare(model, prompts, attn, micro_batches=1, label=""):
    ref_tok, ref_log = decode(model, prompts)
    try:
        tok, log = decode(model, prompts, attn, micro_batches)
    finally:
        attn.close()
    scale = np.abs(ref_log).max()
    worst, notes = 0.0, []
    for b in range(BATCH):
        diff = np.nonzero(tok[b] != ref_tok[b])[0]
        k = int(diff[0]) if diff.size else NEW - 1
        # logits up to and including step k came from the same inputs
        worst = max(worst, float(np.abs(log[b, :k + 1] - ref_log[b, :k + 1]).max() / scale))
        if diff.size:
            top2 = np.sort(ref_log[b, k])[-2:]
            margin = float((top2[1] - top2[0]) / scale)
            assert margin < TIE, (f"sequence {b}: token {tok[b, k]} instead of {ref_tok[b, k]} "
                                  f"at step {k}, where the local top-2 margin was {margin:.2e}")
            notes.append(f"sequence {b} took the other side of a near tie at step {k} "
                         f"(margin {margin:.1e}); compared up to there")
    print(f"{label}: {NEW} tokens x {BATCH} sequences, tokens equal: "
          f"{np.array_equal(tok, ref_tok)}, max logit error {worst:.2e} (relative to max "
          f"|logit|){'; ' + '; '.join(notes) if notes else ''}")
    assert worst <= LOGIT_BOUND


@pytest.mark.parametrize("arch", ["mla", "gqa"])
@pytest.mark.parametrize("api", ["sync", "stream", "async"])
def test_a_lone_worker_decodes_the_same_tokens(start_server, connect, setup, arch, api):
    model, prompts = setup(arch)
    c = connect(start_server("--model", model.preset).target)
    _compare(model, prompts, OffloadAttention(model, [c], api=api),
             micro_batches=2 if api == "async" else 1, label=f"{arch} lone worker, {api}")


@pytest.mark.parametrize("arch,shard,up", [("mla", "sequence", False), ("mla", "sequence", True),
                                           ("gqa", "sequence", False), ("gqa", "head", False)])
def test_a_two_rank_group_decodes_the_same_tokens(start_group, setup, arch, shard, up):
    model, prompts = setup(arch)
    g = start_group(2, "--model", model.preset, "--shard", shard)
    clients = [attnd.Client(r.target, **DEADLINES) for r in g.ranks]
    try:
        _compare(model, prompts, OffloadAttention(model, clients, up_project=up),
                 label=f"{arch} 2 ranks, {shard}{' + W_UV on the group' if up else ''}")
    finally:
        for c in clients:
            c.close()


@pytest.mark.parametrize("arch", ["mla", "gqa"])
def test_bf16_on_the_wire_keeps_logits_within_bf16_tolerance(start_server, connect, setup, arch):
    model, prompts = setup(arch)
    c = connect(start_server("--model", model.preset).target)
    ref_tok, ref_log = decode(model, prompts)
    attn = OffloadAttention(model, [c], wire=attnd.DType.BF16)
    try:
        _, log = decode(model, prompts, attn, forced=ref_tok)
    finally:
        attn.close()
    diff = np.abs(log - ref_log)
    err = float(diff.max() / np.abs(ref_log).max())
    top2 = np.sort(ref_log, axis=-1)[..., -2:]
    clear = (top2[..., 1] - top2[..., 0]) > 2 * diff.max(axis=-1)
    same = log.argmax(-1) == ref_log.argmax(-1)
    print(f"{arch} bf16 wire (teacher-forced): max logit error {err:.2e}; argmax equal at "
          f"{int(same.sum())} of {same.size} steps ({int((~clear).sum())} near ties)")
    assert err <= 1e-2
    assert same[clear].all()


def test_a_latent_group_reports_its_tpla_error(start_group, setup):
    """TPLA (latent sharding) is an approximation: its error is printed."""
    model, prompts = setup("mla")
    g = start_group(2, "--model", model.preset, "--shard", "latent")
    clients = [attnd.Client(r.target, **DEADLINES) for r in g.ranks]
    ref_tok, ref_log = decode(model, prompts)
    attn = OffloadAttention(model, clients, tpla=True)
    try:
        tok, log = decode(model, prompts, attn)
    finally:
        attn.close()
        for c in clients:
            c.close()
    e = np.array(attn.tpla_err)
    agree = float((tok == ref_tok).mean())
    first = int(np.argmax((tok != ref_tok).any(axis=0))) if agree < 1 else NEW
    print(f"mla 2 ranks, latent (TPLA): per-head latent output error ||o_tpla - o|| / ||o|| "
          f"mean {e.mean():.3f}, max {e.max():.3f} over {e.size} (call, sequence, head); "
          f"tokens equal {agree:.0%} (first difference at step {first}); "
          f"max logit error {rel_logit_err(log, ref_log):.2e}")
    assert e.size == NEW * model.n_layers * BATCH * model.n_heads
    assert np.isfinite(e).all()
