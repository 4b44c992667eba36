"""Helpers of the deploy suites: start real attnd processes, talk to them
with the real attnd-cli, scrape their metrics endpoint.

Paths come from the environment CTest sets (tests/deploy/CMakeLists.txt):
ATTND_BIN, ATTND_CLI, ATTND_BENCH, ATTND_SRC. Ports are always 0 and read
back (the gRPC port from --port-file, the metrics port from attnd's
"metrics on http://..." line). Every wait has a generous deadline that only
guards against hangs; no test asserts on timing.
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

ATTND = os.environ.get("ATTND_BIN", "")
CLI = os.environ.get("ATTND_CLI", "")
BENCH = os.environ.get("ATTND_BENCH", "")
SRC = os.environ.get("ATTND_SRC", os.path.join(os.path.dirname(__file__), "..", ".."))

HANG_GUARD_S = 60.0


def skip_or_fail(why):
    """A missing tool: skip (77), or fail under CI (CI=true), where
    .ci/run installs everything and a skip would hide a lint."""
    if os.environ.get("CI") == "true":
        print(f"FAIL: {why} (CI=true: .ci/run should have installed it)", file=sys.stderr)
        sys.exit(1)
    print(f"SKIP: {why}", file=sys.stderr)
    sys.exit(77)


def wait_for(pred, what, timeout=HANG_GUARD_S, every=0.05):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(every)
    raise AssertionError(f"timed out ({timeout:.0f} s hang guard) waiting for {what}")


class Attnd:
    """One attnd process on loopback ports chosen by the kernel.

    args: extra flags. metrics: serve /metrics on 127.0.0.1:0. The caller
    stops it with stop() (SIGTERM, exit code returned) or kill()."""

    def __init__(self, args, metrics=True, env=None, wait=True):
        self.dir = tempfile.mkdtemp(prefix="attnd-deploy-")
        self.port_file = os.path.join(self.dir, "port")
        self.out_path = os.path.join(self.dir, "stdout")
        self.err_path = os.path.join(self.dir, "stderr")
        argv = [ATTND, "--listen", "127.0.0.1:0", "--port-file", self.port_file,
                 "--threads", "2", "--kernel-threads", "1", "--kv-memory", "64Mi"]
        if metrics:
            argv += ["--metrics-listen", "127.0.0.1:0"]
        argv += list(args)
        self.out = open(self.out_path, "w")
        self.err = open(self.err_path, "w")
        self.proc = subprocess.Popen(argv, stdout=self.out, stderr=self.err,
                                     env=dict(os.environ, **(env or {})))
        self.port = None
        self.metrics_url = None
        if wait:
            self.wait_listening(metrics)

    def wait_listening(self, metrics=True):
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"attnd exited with {self.proc.returncode}: "
                                     f"{self.stderr()}")
            if not os.path.exists(self.port_file):
                return None
            if metrics and "metrics on " not in self.stdout():
                return None
            return True
        wait_for(ready, "attnd to listen")
        self.port = int(open(self.port_file).read())
        if metrics:
            m = re.search(r"metrics on (http://\S+)", self.stdout())
            self.metrics_url = m.group(1)

    @property
    def target(self):
        return f"127.0.0.1:{self.port}"

    def stdout(self):
        self.out.flush()
        return open(self.out_path).read()

    def stderr(self):
        self.err.flush()
        return open(self.err_path).read()

    def scrape(self):
        with urllib.request.urlopen(self.metrics_url, timeout=30) as r:
            assert r.status == 200, r.status
            ctype = r.headers.get("Content-Type", "")
            assert ctype.startswith("text/plain; version=0.0.4"), ctype
            return r.read().decode()

    def cli(self, *args, check=False):
        r = subprocess.run([CLI, "--target", self.target, "--deadline-ms", "30000", *args],
                           capture_output=True, text=True, timeout=HANG_GUARD_S * 4)
        if check and r.returncode != 0:
            raise AssertionError(f"attnd-cli {' '.join(args)}: exit {r.returncode}\n"
                                 f"{r.stdout}{r.stderr}")
        return r

    def health(self, service=""):
        r = self.cli("health", service) if service else self.cli("health")
        return r.stdout.strip()

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=HANG_GUARD_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("attnd did not stop within the hang guard")
        return self.proc.returncode

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def close(self):
        self.kill()
        self.out.close()
        self.err.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def group_args(n, rank, gdir, extra=()):
    """Flags of rank `rank` of an n-rank group on loopback whose UCX ports
    are chosen by the kernel and published in gdir."""
    return ["--rank", str(rank), "--group", ",".join(["127.0.0.1:0"] * n),
            "--group-dir", gdir, "--group-connect-ms", "0", *extra]
