#!/usr/bin/env python3
"""Attention captured from Hugging Face models, through attnd's accuracy
harness (attnd-sparse-accuracy --load): issue 13's "real attention" rows.

On the GPU machine (python3 with torch and transformers, no network):

    tests/gpu/capture_attn.py --harness ".gpu/acc/run attnd-sparse-accuracy" [--tokens 16384]

(or ``tests/gpu/run.sh capture``, after ``tests/gpu/run.sh capture-build``
here). For each model it runs one forward pass over --tokens tokens on the
GPU, captures the post-RoPE queries, keys and values of several layers
where the model calls its attention function (the "sdpa" entry of
transformers' attention interface is wrapped for the run: the model's own
masks and arguments are kept, the capture only copies), writes one file
per model in the harness's format (worker/bench/accuracy.h: a record per
layer, the queries of the last --queries positions spread over the last
quarter, each with its own context) into --dir, runs the harness on it and
prints the tables (also to $OUT/capture_<model>.md when $OUT is set).

Models:
  * every Hugging Face model found in the local cache ($HF_HUB_CACHE,
    $HF_HOME/hub, ~/.cache/huggingface/hub; --max-pretrained, smallest
    first, under --max-gb of weights), pretrained weights, with its own
    tokenizer on local text;
  * random weights (std 1/sqrt(fan_in), seed --seed), no download: a
    Llama-style GQA model (16 query heads on 4 KV heads, head_dim 128,
    4 layers) and a DeepSeek-V3-style MLA model (16 heads, kv_lora 512,
    rope 64, nope 128, 4 layers, dense MLP). Their tokens are the bytes of
    the same local text (vocabulary 512), or a fixed pseudo-random sequence
    where no text is found. Random weights do not learn sinks, local
    windows or retrieval heads: their attention is mostly diffuse, so
    these rows say how the policies behave on untrained attention, not
    what a trained model keeps.

MLA is captured in the latent form attnd serves: keys [c, k_rope] (d_k =
kv_lora + rope, c the input of kv_b_proj), values c (d_v = kv_lora), the
absorbed query [q_nope W_UK, q_rope] per head (W_UK from kv_b_proj's
weight), so the harness's outputs are the worker's latent outputs. The
script checks the latent scores against the expanded ones the model
computed (printed as "latent check").

A failure (a model that does not load, a layer that does not capture)
prints the exception and moves on to the next layer or model.

``--selftest`` (numpy only, no torch: runs anywhere) writes a synthetic
GQA record and a latent record in the format and runs the harness on them,
which checks this writer against the C reader.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shlex
import struct
import subprocess
import sys
import time
import traceback

import numpy as np

MAGIC, VERSION, LATENT = b"ATTNDQKV", 1, 1
T0 = time.time()


def log(msg: str) -> None:
    print(f"[{time.time() - T0:6.1f}s] {msg}", flush=True)


# -- the file format (worker/bench/accuracy.h) ------------------------------

def record(layer: int, k, v, q, ctx, scale: float, latent_dv: int = 0) -> dict:
    """k [Hkv][T][d_k], v [Hkv][T][d_v] (None for latent: latent_dv = d_v),
    q [n_queries][Hq][d_k], ctx [n_queries] (query j attends keys 0..ctx[j]-1)."""
    return dict(layer=layer, k=k, v=v, q=q, ctx=ctx, scale=scale, latent_dv=latent_dv)


def write_file(path: str, records) -> int:
    with open(path, "wb") as f:
        f.write(MAGIC + struct.pack("<II", VERSION, len(records)))
        for r in records:
            k = np.ascontiguousarray(r["k"], dtype="<f4")
            q = np.ascontiguousarray(r["q"], dtype="<f4")
            ctx = np.ascontiguousarray(r["ctx"], dtype="<u4")
            hkv, T, dk = k.shape
            nq, hq, qdk = q.shape
            assert qdk == dk and ctx.shape == (nq,) and 1 <= ctx.min() and ctx.max() <= T
            latent = r["latent_dv"] > 0
            v = None if latent else np.ascontiguousarray(r["v"], dtype="<f4")
            dv = r["latent_dv"] if latent else v.shape[2]
            assert latent or v.shape[:2] == (hkv, T)
            f.write(struct.pack("<7Ifi7I", hq, hkv, T, dk, dv, nq, LATENT if latent else 0,
                                float(r["scale"]), int(r["layer"]), *([0] * 7)))
            f.write(k.tobytes())
            if not latent:
                f.write(v.tobytes())
            f.write(ctx.tobytes())
            f.write(q.tobytes())
        return f.tell()


def run_harness(harness: str, path: str, label: str, ranks: int) -> None:
    cmd = shlex.split(harness) + ["--load", path, "--page-size", "64", "--ranks", str(ranks)]
    log(f"{label}: {' '.join(cmd)}")
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    print(p.stdout, end="", flush=True)
    if p.returncode != 0:
        print(f"{label}: harness exit {p.returncode}: {p.stderr.strip()}", flush=True)
    out = os.environ.get("OUT")
    if out:
        safe = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in label)
        with open(os.path.join(out, f"capture_{safe}.md"), "w") as f:
            f.write(p.stdout + (f"\nharness exit {p.returncode}: {p.stderr}\n" if p.returncode else ""))


def selftest(args) -> int:
    """Synthetic records (a needle per KV head) through the writer and the harness."""
    rng = np.random.default_rng(args.seed)
    T, hq, hkv, d = 4096, 8, 2, 128
    k = 0.3 * rng.standard_normal((hkv, T, d))
    q = np.empty((2, hq, d))
    for g in range(hkv):
        base = rng.standard_normal(d)
        q[:, g * (hq // hkv):(g + 1) * (hq // hkv)] = base + 0.3 * rng.standard_normal((2, hq // hkv, d))
        for t in rng.integers(0, 64, 4) + 64 * (10 + 20 * g):
            k[g, t] = 12 * np.sqrt(d) * base / (base @ base)
    v = rng.standard_normal((hkv, T, d))
    kl = rng.standard_normal((1, T, 576)) * 0.3
    ql = rng.standard_normal((1, 16, 576))
    path = os.path.join(args.dir, "selftest.qkv")
    n = write_file(path, [record(0, k, v, q, [T, T - 500], d ** -0.5),
                          record(1, kl, None, ql, [T], 192 ** -0.5, latent_dv=512)])
    log(f"selftest: wrote {path} ({n / 1e6:.1f} MB)")
    run_harness(args.harness, path, "selftest", args.ranks)
    return 0


# -- text and tokens ---------------------------------------------------------

def local_text(min_chars: int):
    """Real-looking text from this machine: licence texts, package
    copyright notes, then Python's own sources. (text, what it is) or None."""
    pats = ["/usr/share/common-licenses/*", "/usr/share/doc/*/copyright",
            os.path.join(os.path.dirname(os.__file__), "*.py")]
    parts, n, used = [], 0, []
    for pat in pats:
        for fn in sorted(glob.glob(pat)):
            try:
                with open(fn, encoding="utf-8", errors="ignore") as f:
                    s = f.read()
            except OSError:
                continue
            parts.append(s)
            n += len(s)
            if pat not in used:
                used.append(pat)
            if n >= min_chars:
                return "\n".join(parts), "local text (" + ", ".join(used) + ")"
    if n > 0:
        return "\n".join(parts), "local text (" + ", ".join(used) + "; repeated to length)"
    return None


def byte_tokens(T: int, seed: int):
    t = local_text(T)
    if t is None:
        rng = np.random.default_rng(seed)
        return rng.integers(0, 512, T), "pseudo-random tokens (no local text found)"
    b = np.frombuffer(t[0].encode("utf-8", errors="ignore"), dtype=np.uint8)
    return np.resize(b, T).astype(np.int64), "bytes of " + t[1]


# -- models ------------------------------------------------------------------

def cached_models(max_gb: float):
    roots = [os.environ.get("HF_HUB_CACHE"), os.environ.get("TRANSFORMERS_CACHE"),
             os.path.join(os.environ["HF_HOME"], "hub") if os.environ.get("HF_HOME") else None,
             os.path.expanduser("~/.cache/huggingface/hub")]
    found, seen = [], set()
    for root in filter(None, roots):
        for cfg in glob.glob(os.path.join(root, "models--*", "snapshots", "*", "config.json")):
            d = os.path.dirname(cfg)
            if d in seen:
                continue
            seen.add(d)
            w = sum(os.path.getsize(p) for pat in ("*.safetensors", "*.bin")
                    for p in glob.glob(os.path.join(d, pat)))
            try:
                with open(cfg) as f:
                    mt = json.load(f).get("model_type", "?")
            except (OSError, ValueError):
                mt = "?"
            name = d.split("models--")[-1].split("/snapshots")[0].replace("--", "/")
            log(f"cache: {name} ({mt}, {w / 1e9:.2f} GB of weights) at {d}")
            if 0 < w <= max_gb * 1e9:
                found.append((w, name, d))
    return [(n, d) for _, n, d in sorted(found)]


def reinit(torch, model, seed: int):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:  # [.., out, in]: std 1/sqrt(fan_in)
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
            elif "norm" in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
    return model


def from_config(transformers, cls, cfg):
    """cls(cfg) with the sdpa attention function (the one the capture wraps)."""
    try:
        return transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")
    except Exception as e:  # noqa: BLE001 -- older or newer signature: set it by hand
        log(f"from_config(attn_implementation='sdpa') failed ({e}); setting it on the config")
        cfg._attn_implementation = "sdpa"
        return cls(cfg)


def random_gqa(torch, transformers, T: int, seed: int):
    kw = dict(vocab_size=512, hidden_size=1024, intermediate_size=2048, num_hidden_layers=4,
              num_attention_heads=16, num_key_value_heads=4, head_dim=128,
              max_position_embeddings=max(T, 32768), rms_norm_eps=1e-6, tie_word_embeddings=False)
    cfg = transformers.LlamaConfig(**kw)
    return reinit(torch, from_config(transformers, transformers.LlamaForCausalLM, cfg), seed)


def random_mla(torch, transformers, T: int, seed: int):
    cfg = transformers.DeepseekV3Config(
        vocab_size=512, hidden_size=1024, intermediate_size=2048, moe_intermediate_size=256,
        num_hidden_layers=4, num_attention_heads=16, num_key_value_heads=16, n_shared_experts=1,
        n_routed_experts=4, num_experts_per_tok=2, n_group=1, topk_group=1,
        first_k_dense_replace=4, kv_lora_rank=512, q_lora_rank=384, qk_rope_head_dim=64,
        qk_nope_head_dim=128, v_head_dim=128, max_position_embeddings=max(T, 32768),
        rms_norm_eps=1e-6, rope_interleave=True, tie_word_embeddings=False)
    return reinit(torch, from_config(transformers, transformers.DeepseekV3ForCausalLM, cfg), seed)


# -- capture -----------------------------------------------------------------

class Done(Exception):
    """Raised once the last wanted layer is captured: the rest of the
    forward pass is not needed."""


class Capture:
    """What the wrapped attention function saw, per wanted layer: float32 on
    the host. For MLA modules (kv_b_proj present) the latent form."""

    def __init__(self, torch, layers, positions):
        self.torch, self.want, self.pos = torch, set(layers), list(positions)
        self.records, self.latent_c, self.notes = {}, {}, []
        self.calls = 0

    def kv_b_hook(self, layer):
        def hook(module, inputs):
            if layer in self.want:
                self.latent_c[layer] = inputs[0][0].detach()  # [T, kv_lora]
        return hook

    def take(self, module, query, key, value, kw):
        self.calls += 1
        layer = getattr(module, "layer_idx", None)
        if layer not in self.want or layer in self.records:
            return
        torch = self.torch
        try:
            scale = kw.get("scaling")
            scale = float(scale) if scale is not None else query.shape[-1] ** -0.5
            pos = torch.tensor(self.pos, device=query.device)
            ctx = np.array([p + 1 for p in self.pos])
            if hasattr(module, "kv_b_proj"):
                self.records[layer] = self.latent(module, layer, query, key, pos, ctx, scale)
            else:
                q = query[0][:, pos, :].transpose(0, 1).float().cpu().numpy()  # [nq, Hq, D]
                k = key[0].float().cpu().numpy()
                v = value[0].float().cpu().numpy()
                self.records[layer] = record(layer, k, v, q, ctx, scale)
            log(f"layer {layer}: captured")
        except Exception:  # noqa: BLE001 -- report and go on with the next layer
            self.notes.append(f"layer {layer}: capture failed")
            print(f"layer {layer}: capture failed:\n{traceback.format_exc()}", flush=True)
            self.records[layer] = None
        if self.records.keys() >= self.want:
            raise Done()

    def latent(self, m, layer, query, key, pos, ctx, scale):
        torch = self.torch
        nope, rope, H, c_dim = m.qk_nope_head_dim, m.qk_rope_head_dim, query.shape[1], m.kv_lora_rank
        c = self.latent_c.pop(layer)  # kv_b_proj's input: [1, T, kv_lora] (batch of one)
        c = c.reshape(-1, c_dim)  # [T, kv_lora]
        w = m.kv_b_proj.weight.view(H, -1, c_dim)[:, :nope, :].float()  # W_UK [H, nope, kv_lora]
        qs = query[0][:, pos, :].float()  # [H, nq, nope + rope]
        q_c = torch.einsum("hnd,hdc->nhc", qs[..., :nope], w)
        q_lat = torch.cat([q_c, qs[..., nope:].transpose(0, 1)], dim=-1)  # [nq, H, kv_lora + rope]
        k_lat = torch.cat([c.float(), key[0, 0, :, nope:].float()], dim=-1)  # [T, kv_lora + rope]
        # the latent scores against those the model computed (the last query)
        idx = torch.linspace(0, int(ctx[0]) - 1, 512, device=query.device).long()
        s_lat = q_lat[0] @ k_lat[idx].T
        s_exp = torch.einsum("hd,htd->ht", qs[:, 0], key[0][:, idx].float())
        rel = ((s_lat - s_exp).abs().max() / s_exp.abs().max()).item()
        self.notes.append(f"layer {layer}: latent check max |s_latent - s_model| / max |s| = {rel:.1e}")
        return record(layer, k_lat[None].cpu().numpy(), None, q_lat.cpu().numpy(), ctx, scale,
                      latent_dv=c_dim)


def capture_model(torch, transformers, model, ids, layers, positions):
    from transformers import AttentionInterface
    try:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    except ImportError:
        from transformers import ALL_ATTENTION_FUNCTIONS
    cap = Capture(torch, layers, positions)
    hooks = []
    base = getattr(model, "model", model)
    for i, layer in enumerate(getattr(base, "layers", [])):
        kvb = getattr(getattr(layer, "self_attn", None), "kv_b_proj", None)
        if kvb is not None and i in cap.want:
            hooks.append(kvb.register_forward_pre_hook(cap.kv_b_hook(i)))
    orig = ALL_ATTENTION_FUNCTIONS["sdpa"]

    def capturing(module, query, key, value, attention_mask, **kw):
        cap.take(module, query, key, value, kw)
        return orig(module, query, key, value, attention_mask, **kw)

    AttentionInterface.register("sdpa", capturing)
    try:
        with torch.no_grad():
            base(input_ids=ids, use_cache=False)
    except Done:
        pass
    finally:
        AttentionInterface.register("sdpa", orig)
        for h in hooks:
            h.remove()
    if cap.calls == 0:
        raise RuntimeError("the model never called the sdpa attention function: nothing captured")
    for n in cap.notes:
        log(n)
    return [cap.records[k] for k in sorted(cap.records) if cap.records[k] is not None]


def n_layers(model) -> int:
    cfg = model.config
    return int(getattr(cfg, "num_hidden_layers", None) or len(getattr(model.model, "layers")))


def one_model(torch, transformers, args, label, make):
    t0 = time.time()
    model, ids, what = make()
    model = model.to(device=args.device, dtype=torch.bfloat16).eval()
    L = n_layers(model)
    layers = sorted({round(i * (L - 1) / max(1, args.layers - 1)) for i in range(min(args.layers, L))})
    T = ids.shape[1]
    stride = max(1, T // (4 * args.queries))
    positions = [T - 1 - j * stride for j in range(args.queries)]
    impl = getattr(model.config, "_attn_implementation", "?")
    log(f"{label}: {L} layers, capturing {layers}; {T} tokens: {what}; queries at positions "
        f"{positions}; attention {impl}; built in {time.time() - t0:.1f} s")
    recs = capture_model(torch, transformers, model, ids.to(args.device), layers, positions)
    del model
    torch.cuda.empty_cache()
    if not recs:
        log(f"{label}: nothing captured")
        return
    path = os.path.join(args.dir, f"{label.replace('/', '_')}.qkv")
    n = write_file(path, recs)
    log(f"{label}: wrote {len(recs)} records to {path} ({n / 1e6:.0f} MB)")
    run_harness(args.harness, path, label, args.ranks)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--harness", required=True, help='the harness command, e.g. ".gpu/acc/run attnd-sparse-accuracy"')
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--queries", type=int, default=4)
    ap.add_argument("--layers", type=int, default=4, help="layers captured per model, spread evenly")
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--seed", type=int, default=20261205)
    ap.add_argument("--dir", default=os.environ.get("ATTND_CAPTURE_DIR", "/tmp/attnd_capture"))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--max-pretrained", type=int, default=2)
    ap.add_argument("--max-gb", type=float, default=8.0)
    ap.add_argument("--only", choices=["all", "pretrained", "random"], default="all")
    ap.add_argument("--selftest", action="store_true")
    args = ap.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    if args.selftest:
        return selftest(args)
    try:
        import torch
        import transformers
    except ImportError as e:
        print(f"no torch/transformers here ({e}): nothing to capture")
        return 77
    log(f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"device {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu'}")
    T, failed = args.tokens, 0
    plan = []
    if args.only in ("all", "pretrained"):
        found = cached_models(args.max_gb)[: args.max_pretrained]
        if not found:
            log("no pretrained model in the local Hugging Face cache: random weights only")
        for name, path in found:
            def make(path=path, name=name):
                tok = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
                auto = transformers.AutoModelForCausalLM
                try:
                    model = auto.from_pretrained(path, local_files_only=True,
                                                 attn_implementation="sdpa", dtype=torch.bfloat16)
                except TypeError:  # transformers 4: torch_dtype
                    model = auto.from_pretrained(path, local_files_only=True,
                                                 attn_implementation="sdpa", torch_dtype=torch.bfloat16)
                limit = int(getattr(model.config, "max_position_embeddings", T) or T)
                t = local_text(8 * T)
                if t is not None:
                    ids = tok(t[0], return_tensors="pt").input_ids[:, : min(T, limit)]
                    what = f"{name}'s tokenizer on {t[1]}"
                else:
                    g = torch.Generator().manual_seed(args.seed)
                    ids = torch.randint(0, len(tok), (1, min(T, limit)), generator=g)
                    what = "pseudo-random tokens (no local text found)"
                return model, ids, f"pretrained {name}; {what}"
            plan.append((name, make))
    if args.only in ("all", "random"):
        tokens, what = byte_tokens(T, args.seed)
        ids = torch.as_tensor(tokens, dtype=torch.long)[None]
        torch.manual_seed(args.seed)
        plan.append(("random-llama-gqa", lambda: (random_gqa(torch, transformers, T, args.seed), ids,
                                                  f"random weights, seed {args.seed}; {what}")))
        plan.append(("random-deepseek-mla", lambda: (random_mla(torch, transformers, T, args.seed + 1),
                                                     ids, f"random weights, seed {args.seed + 1}; {what}")))
    for label, make in plan:
        try:
            one_model(torch, transformers, args, label, make)
        except Exception:  # noqa: BLE001 -- report and go on with the next model
            failed += 1
            print(f"{label}: FAILED\n{traceback.format_exc()}", flush=True)
            torch.cuda.empty_cache()
    log(f"done: {len(plan) - failed} of {len(plan)} models captured and measured")
    return 1 if failed == len(plan) else 0


if __name__ == "__main__":
    sys.exit(main())
