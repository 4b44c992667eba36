"""The ctypes declarations of the binding (attnd/_lib.py) against the C
header: every structure's size and every field's offset as the C compiler
laid them out (tests/python/layout.c, built by CMake: ATTND_PY_LAYOUT), and
every function the binding declares exported by the libattnd it loaded."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from attnd import _lib


@pytest.fixture(scope="module")
def c_layout():
    exe = os.environ.get("ATTND_PY_LAYOUT")
    if not exe:
        pytest.skip("ATTND_PY_LAYOUT (the layout program CMake builds) is not set")
    return json.loads(subprocess.run([exe], check=True, capture_output=True, text=True).stdout)


@pytest.mark.parametrize("name", sorted(_lib.STRUCTS))
def test_ctypes_structures_match_the_c_layout(c_layout, name):
    py = _lib.STRUCTS[name]
    c = c_layout[name]
    assert list(c["fields"]) == [f[0] for f in py._fields_], "field names or order differ"
    for fname, off in c["fields"].items():
        assert getattr(py, fname).offset == off, f"{name}.{fname}"
    assert _lib.ctypes.sizeof(py) == c["size"]


def test_every_declared_function_is_exported():
    lib = _lib.lib()
    for name in _lib.FUNCTIONS:
        assert hasattr(lib, name), name
