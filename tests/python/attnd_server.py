"""Real attnd servers for the Python tests (no pytest needed: the HF check
runs as a plain script on the GPU machine too).

``Server`` starts the attnd built with these tests (``ATTND_BIN``, set by
CTest; else build/service/attnd of this checkout) on ``--listen
127.0.0.1:0 --port-file <tmp>`` and reads the port back, as tests/client
does. The child gets PR_SET_PDEATHSIG(SIGKILL), so it dies with the test
process however that ends. ``stop()`` sends SIGTERM and returns the exit
status (the fixtures assert 0: a clean drain).

``Group`` starts N ranks of one worker group on loopback the way
tests/group does (worker/GROUPS.md): ``--rank r --group
127.0.0.1:0,... --group-dir <tmp> --group-connect-ms 0``, then waits until
every rank reports all its peers connected (GetStats).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[2]


def attnd_bin() -> str:
    """The attnd executable under test."""
    p = os.environ.get("ATTND_BIN") or str(ROOT / "build" / "service" / "attnd")
    if not os.access(p, os.X_OK):
        raise FileNotFoundError(f"attnd executable not found at {p} (set ATTND_BIN)")
    return p


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Server:
    """One attnd process; ``target`` is "127.0.0.1:PORT"."""

    def __init__(self, flags: Sequence[str] = (), start_timeout: float = 30.0):
        self.dir = tempfile.mkdtemp(prefix="attnd-pytest-")
        port_file = os.path.join(self.dir, "port")
        self.log_path = os.path.join(self.dir, "stderr")
        argv = [attnd_bin(), "--listen", "127.0.0.1:0", "--port-file", port_file,
                "--kv-memory", "256Mi", "--shutdown-grace-ms", "5000", "--threads", "4",
                *flags]  # later flags win
        self.argv = argv
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=log,
                                         preexec_fn=_die_with_parent)
        deadline = time.monotonic() + start_timeout
        self.port = 0
        while time.monotonic() < deadline:
            try:
                with open(port_file) as f:
                    txt = f.read().strip()
                if txt:
                    self.port = int(txt)
                    break
            except FileNotFoundError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"attnd exited at start ({self.proc.returncode}): {self.log()}")
            time.sleep(0.005)
        if not self.port:
            self.kill()
            raise RuntimeError(f"attnd wrote no port file in {start_timeout} s: {self.log()}")
        self.target = f"127.0.0.1:{self.port}"

    def log(self) -> str:
        """What the server wrote to stderr so far (its last 4000 characters)."""
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> Optional[int]:
        """SIGTERM and wait: the exit status, or None if it died of a signal
        or had to be killed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                return None
        rc = self.proc.returncode
        shutil.rmtree(self.dir, ignore_errors=True)
        return rc if rc >= 0 else None

    def kill(self) -> None:
        """SIGKILL (as a crash) and reap."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class Group:
    """N ranks of one worker group; ``ranks[r].target`` reaches rank r."""

    def __init__(self, n: int, flags: Sequence[str] = ()):
        self.dir = tempfile.mkdtemp(prefix="attnd-pytest-group-")
        group = ",".join(["127.0.0.1:0"] * n)
        self.ranks: List[Server] = []
        try:
            for r in range(n):
                self.ranks.append(Server([*flags, "--rank", str(r), "--group", group,
                                          "--group-dir", self.dir, "--group-connect-ms", "0"]))
            self._wait_connected(n - 1)
        except BaseException:
            self.stop()
            raise

    def _wait_connected(self, want: int, timeout: float = 30.0) -> None:
        import attnd
        for s in self.ranks:
            with attnd.Client(s.target, connect_timeout_ms=30000) as c:
                deadline = time.monotonic() + timeout
                while c.stats().group_connected != want:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"rank {s.target} did not see {want} peers in "
                                           f"{timeout} s: {s.log()}")
                    time.sleep(0.02)

    def stop(self) -> List[Optional[int]]:
        """Stop every rank; their exit statuses."""
        rcs = [s.stop() for s in self.ranks]
        shutil.rmtree(self.dir, ignore_errors=True)
        return rcs
