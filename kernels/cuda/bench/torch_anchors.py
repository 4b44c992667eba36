#!/usr/bin/env python3
"""Torch anchors for the GPU decode benchmark, on the shapes bench_cuda times.

GQA 32/8/128: torch.nn.functional.scaled_dot_product_attention with one query
token, dense bf16 K/V, enable_gqa=True, every SDPA backend that accepts the
shape; the best is reported as effective KV read bandwidth (K + V bytes over
the time). MLA (DeepSeek-V3 absorbed, 576/512): torch eager bmm -> softmax
(float32) -> bmm, reported in TFLOP/s (2 * B * H * S * L * (576 + 512)).
Timing: CUDA events; warm-up for at least 30 ms, then 30 timed runs queued
behind ~2 ms of matrix work (clocks up, no launch gaps), median; inputs
rotated among enough sets to exceed 256 MB. Writes "key<TAB>metric<TAB>value" lines to argv[1]
(read by bench_cuda --torch) and a readable log to stdout."""
import math
import statistics
import sys
import warnings

import torch
import torch.nn.functional as F

DEV = "cuda"
WARMUP, REPS = 5, 30


_busy = None


def busy():
    """~2 ms of matrix work: keeps the clocks up while timed runs queue."""
    global _busy
    if _busy is None:
        _busy = torch.randn(4096, 4096, device=DEV, dtype=torch.bfloat16)
    for _ in range(10):
        torch.mm(_busy, _busy)


def median_ms(fn, n_sets):
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    i = 0
    while True:  # warm up for WARMUP runs and at least 30 ms (clocks ramp up)
        fn(i % n_sets)
        i += 1
        if i % WARMUP == 0:
            b.record()
            b.synchronize()
            if a.elapsed_time(b) >= 30 or i > 100000:
                break
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
          for _ in range(REPS)]
    busy()
    for i, (a, b) in enumerate(ev):
        a.record()
        fn(i % n_sets)
        b.record()
    torch.cuda.synchronize()
    return statistics.median(a.elapsed_time(b) for a, b in ev)


def sets_for(nbytes):
    return max(1, min(32, math.ceil(256e6 / nbytes)))


def gqa(out, batch, ctx, hq=32, hkv=8, d=128):
    kv_bytes = 2 * batch * hkv * ctx * d * 2
    n = sets_for(kv_bytes)
    qs = [torch.randn(batch, hq, 1, d, device=DEV, dtype=torch.bfloat16) for _ in range(n)]
    ks = [torch.randn(batch, hkv, ctx, d, device=DEV, dtype=torch.bfloat16) for _ in range(n)]
    vs = [torch.randn(batch, hkv, ctx, d, device=DEV, dtype=torch.bfloat16) for _ in range(n)]
    from torch.nn.attention import SDPBackend, sdpa_kernel
    best = None
    for name, be in (("flash", SDPBackend.FLASH_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION),
                     ("cudnn", SDPBackend.CUDNN_ATTENTION), ("math", SDPBackend.MATH)):
        try:
            with sdpa_kernel([be]):
                ms = median_ms(lambda i: F.scaled_dot_product_attention(qs[i], ks[i], vs[i], enable_gqa=True), n)
        except Exception as e:  # backend refuses the shape
            print(f"gqa B={batch} L={ctx} {name}: n/a ({type(e).__name__})")
            continue
        gbs = kv_bytes / (ms * 1e-3) / 1e9
        print(f"gqa B={batch} L={ctx} {name}: {ms * 1e3:.1f} us, {gbs:.0f} GB/s")
        if best is None or ms < best[1]:
            best = (name, ms)
    if best:
        key = f"gqa {batch} {ctx}"
        out.write(f"{key}\tgbs\t{kv_bytes / (best[1] * 1e-3) / 1e9:.1f}\n")
        out.write(f"{key}\tus\t{best[1] * 1e3:.1f}\n")
        out.write(f"{key}\tbackend\t{best[0]}\n")
    del qs, ks, vs
    torch.cuda.empty_cache()


def mla(out, batch, heads, s, ctx, dk=576, dv=512):
    kv_bytes = batch * ctx * dk * 2
    n = sets_for(kv_bytes)
    scale = 1.0 / math.sqrt(192.0)
    qs = [torch.randn(batch, heads * s, dk, device=DEV, dtype=torch.bfloat16) for _ in range(n)]
    kvs = [torch.randn(batch, ctx, dk, device=DEV, dtype=torch.bfloat16) for _ in range(n)]

    def run(i):
        sc = torch.bmm(qs[i], kvs[i].transpose(1, 2))
        p = torch.softmax(sc.float() * scale, dim=-1).to(torch.bfloat16)
        return torch.bmm(p, kvs[i][:, :, :dv])

    ms = median_ms(run, n)
    flops = 2.0 * batch * heads * s * ctx * (dk + dv)
    tf = flops / (ms * 1e-3) / 1e12
    gbs = kv_bytes / (ms * 1e-3) / 1e9
    print(f"mla B={batch} H={heads} S={s} L={ctx} eager: {ms * 1e3:.1f} us, {tf:.1f} TFLOP/s, {gbs:.0f} GB/s")
    key = f"mla {batch} {heads} {s} {ctx}"
    out.write(f"{key}\ttflops\t{tf:.2f}\n{key}\tgbs\t{gbs:.1f}\n{key}\tus\t{ms * 1e3:.1f}\n")
    del qs, kvs
    torch.cuda.empty_cache()


def main():
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}")
    with open(sys.argv[1], "w") as out:
        for b, l in ((1, 1024), (1, 8192), (1, 32768), (1, 131072), (16, 8192), (16, 32768),
                     (64, 4096), (64, 16384), (128, 1024), (128, 4096), (128, 8192)):
            gqa(out, b, l)
        for b, h, s, l in ((128, 16, 1, 4096), (128, 16, 1, 8192), (64, 128, 1, 4096),
                           (128, 128, 1, 4096), (64, 128, 2, 4096), (128, 128, 2, 4096)):
            mla(out, b, h, s, l)


if __name__ == "__main__":
    main()
