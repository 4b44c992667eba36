"""The READMEs' Python examples, run as printed.

The code block under "## Python" in README.md is taken out of the README
and executed against a live ``attnd --model deepseek-v3`` (the model the
example names), with only its target address replaced by the test
server's. Its three outputs are checked: the right shape, finite, and
equal to each other (the first call appends the token at position 100,
the other two attend over the same 101 tokens with the same query), and
each equals the float64 reference computed here from the bytes the
example sent. The sparse example of client/python/README.md runs the same
way against ``attnd --model llama3-8b``; the pages it reports and both
outputs over exactly those pages are checked.
"""

from __future__ import annotations

import re

import numpy as np

import attnd
from attnd_server import ROOT


def readme_python_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Python", 1)[1]
    m = re.search(r"```python\n(.*?)```", section, re.S)
    assert m, "README.md: no ```python block under '## Python'"
    return m.group(1)


def test_the_readme_python_example_runs_as_printed_and_answers_the_reference(start_server):
    code = readme_python_block()
    assert '"127.0.0.1:7700"' in code, "the example's target changed: update this test"
    srv = start_server("--model", "deepseek-v3", "--kv-memory", "1G")
    ns: dict = {}
    exec(compile(code.replace('"127.0.0.1:7700"', repr(srv.target)), "README.md", "exec"), ns)

    out, out2, out3 = (np.asarray(ns[k], np.float64) for k in ("out", "out2", "out3"))
    m = ns["m"]
    assert out.shape == (1, m.n_q_heads, m.d_v) == (1, 128, 512)
    assert np.isfinite(out).all()
    # the reference: 100 prefilled zero entries plus the new token of ones;
    # MLA keys are the whole entry (d_k = 576), values its first d_v
    kv = np.concatenate([np.zeros((100, m.kv_token_elems)), np.ones((1, m.kv_token_elems))])
    q = np.ones((m.n_q_heads, m.d_k))
    s = q @ kv[:, : m.d_k].T * m.scale
    p = np.exp(s - s.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    ref = p @ kv[:, : m.d_v]
    tol = 1e-2  # the worker stores bf16 KV by default
    assert np.max(np.abs(out[0] - ref)) <= tol * max(1.0, np.max(np.abs(ref)))
    np.testing.assert_allclose(out2, out, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out3, out, rtol=1e-6, atol=1e-6)


def python_readme_sparse_block() -> str:
    text = (ROOT / "client" / "python" / "README.md").read_text()
    section = text.split("\n## Sparse attention", 1)[1]
    m = re.search(r"```python\n(.*?)```", section, re.S)
    assert m, "client/python/README.md: no ```python block under '## Sparse attention'"
    return m.group(1)


def test_the_python_readme_sparse_example_runs_and_attends_the_pages_it_reports(start_server):
    """client/python/README.md's sparse example against attnd --model
    llama3-8b: layer 0 reports a ninth of the 65 pages per KV head (sink and
    newest included), the async call on layer 2 reports the same pages, and
    the four layers' outputs (blocking, given, async, stream) equal float64
    attention over exactly those pages of their own KV (the example's
    arrays)."""
    code = python_readme_sparse_block()
    assert '"127.0.0.1:7700"' in code, "the example's target changed: update this test"
    srv = start_server("--model", "llama3-8b", "--kv-memory", "1G")
    ns: dict = {}
    exec(compile(code.replace('"127.0.0.1:7700"', repr(srv.target)), "client/python/README.md",
                 "exec"), ns)
    m, T, pages = ns["m"], ns["T"], ns["pages"]
    assert ns["pages2"] == pages
    assert m.page_size == 64 and pages.groups == m.n_kv_heads and not pages.tokens
    n_pages = T // 64 + 1
    for g in range(m.n_kv_heads):
        lst = pages.list(0, g)
        assert len(lst) == -(-n_pages // 8) and lst[0] == 0 and lst[-1] == n_pages - 1
    q = ns["q"][0].astype(np.float64)
    per = m.n_q_heads // m.n_kv_heads
    for layer in range(4):
        out = ns[f"out{layer}"]
        kv = np.concatenate([ns["prompt"][layer], ns["kv"][layer]])  # [T + 1, 2, Hkv, D]
        kv = attnd.from_bf16(attnd.to_bf16(kv.astype(np.float32))).astype(np.float64)
        for h in range(m.n_q_heads):
            g = h // per
            tok = np.concatenate([np.arange(64 * int(p), min(64 * int(p) + 64, T + 1))
                                  for p in pages.list(0, g)])
            s = kv[tok, 0, g] @ q[h] * m.scale
            p = np.exp(s - s.max())
            ref = p @ kv[tok, 1, g] / p.sum()
            err = np.max(np.abs(out[0, h] - ref)) / max(1.0, np.max(np.abs(ref)))
            assert err <= 1e-5, f"layer {layer} head {h}: error {err}"
