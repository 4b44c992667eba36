"""client/python/build-wheel.sh: the wheel carries libattnd.so.0, installs
into a fresh virtual environment (offline), and the installed package
loads the library it carries (no ATTND_LIB, not run from the checkout) and
talks to a real attnd with it."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _lib_build_dir() -> Path:
    lib = os.environ.get("ATTND_LIB")
    if not lib:
        pytest.skip("ATTND_LIB (the libattnd CMake built) is not set")
    return Path(lib)


def test_the_wheel_bundles_libattnd_and_works_once_installed(tmp_path, start_server):
    lib = _lib_build_dir()
    for mod in ("pip", "setuptools", "wheel", "venv"):
        if subprocess.run([sys.executable, "-c", f"import {mod}"],
                          capture_output=True).returncode != 0:
            pytest.skip(f"python module {mod} missing (deploy/install-deps.sh installs it)")
    env = dict(os.environ, ATTND_LIB=str(lib), PYTHON=sys.executable)
    subprocess.run([str(ROOT / "client/python/build-wheel.sh"), str(tmp_path), str(tmp_path)],
                   check=True, env=env, capture_output=True)
    wheels = list(tmp_path.glob("attnd-*.whl"))
    assert len(wheels) == 1 and "py3-none-linux" in wheels[0].name
    with zipfile.ZipFile(wheels[0]) as z:
        names = z.namelist()
    assert "attnd/libattnd.so.0" in names and "attnd/client.py" in names

    # outside the checkout: no PYTHONPATH (it would show pip a copy already there)
    clean = {k: v for k, v in os.environ.items() if k not in ("ATTND_LIB", "PYTHONPATH")}
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
                   check=True, capture_output=True, env=clean)
    py = str(venv / "bin" / "python")
    subprocess.run([py, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                    str(wheels[0])], check=True, capture_output=True, env=clean)
    srv = start_server("--model", "tiny-gqa")
    probe = (
        "import attnd, numpy as np\n"
        "print(attnd.library_path())\n"
        f"with attnd.Client('{srv.target}') as c, c.session() as s:\n"
        "    s.append_kv(0, np.ones((4, 2, 2, 32), np.float32))\n"
        "    out = c.attend(0, [s], np.ones((1, 8, 32), np.float32))\n"
        "    print(c.health(), float(out.mean()))\n")
    res = subprocess.run([py, "-c", probe], check=True, capture_output=True, text=True,
                         env=clean, cwd=str(tmp_path))
    path, line = res.stdout.splitlines()[:2]
    assert path.startswith(str(venv)) and path.endswith("attnd/libattnd.so.0")
    # V is all ones: every output element is exactly 1
    assert line == "True 1.0"
