"""The README's Python example, run as printed.

The code block under "## Python" in README.md is taken out of the README
and executed against a live ``attnd --model deepseek-v3`` (the model the
example names), with only its target address replaced by the test
server's. Its three outputs are checked: the right shape, finite, and
equal to each other (the first call appends the token at position 100,
the other two attend over the same 101 tokens with the same query), and
each equals the float64 reference computed here from the bytes the
example sent.
"""

from __future__ import annotations

import re

import numpy as np

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
