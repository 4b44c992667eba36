"""deploy/CONFIG.md's table against the real `attnd --help`, and every
ATTND_* variable of that table against what attnd really does with it
(`attnd --print-config`): a flag added to attnd fails here until the table
is regenerated and the flag has a sample value below."""
import os
import subprocess
import sys
import tempfile
import unittest

from attnd_proc import ATTND, SRC

sys.path.insert(0, os.path.join(SRC, "deploy"))
import config_table  # noqa: E402

# flag -> (a value for its variable, what --print-config shows for it);
# each differs from attnd's default
SAMPLES = {
    "--listen": ("127.0.0.1:7799", "127.0.0.1:7799"),
    "--model": ("tiny-gqa", "tiny-gqa"),
    "--threads": ("3", "3"),
    "--io-threads": ("3", "3"),
    "--drain-delay-ms": ("1500", "1500"),
    "--max-connections": ("77", "77"),
    "--kernel-threads": ("2", "2"),
    "--kernel-path": ("scalar", "scalar"),
    "--device": ("cuda:1", "cuda:1"),
    "--max-sessions": ("7", "7"),
    "--kv-memory": ("2Mi", "2097152"),
    "--page-size": ("32", "32"),
    "--kv-dtype": ("f32", "f32"),
    "--max-message": ("1Mi", "1048576"),
    "--port-file": ("/tmp/attnd-port", "/tmp/attnd-port"),
    "--shutdown-grace-ms": ("1234", "1234"),
    "--http2-lookahead": ("4096", "4096"),
    "--http2-max-frame": ("16384", "16384"),
    "--ucx-listen": ("auto", "auto"),
    "--ucx-exec-threads": ("1", "1"),
    "--ucx-spin-us": ("7", "7"),
    "--ucx-conn-queue": ("9", "9"),
    "--ucx-conn-bytes": ("1Mi", "1048576"),
    "--rank": ("1", "1"),
    "--group": ("127.0.0.1:1,127.0.0.1:2", "127.0.0.1:1,127.0.0.1:2"),
    "--group-file": ("@groupfile", "@groupfile"),
    "--group-dir": ("/tmp/attnd-gdir", "/tmp/attnd-gdir"),
    "--shard": ("head", "head"),
    "--tpla-rope": ("split", "split"),
    "--tpla-mu": ("0.5", "0.5"),
    "--group-connect-ms": ("5", "5"),
    "--group-timeout-ms": ("6", "6"),
    "--group-secret-file": ("/tmp/attnd-gsecret", "/tmp/attnd-gsecret"),
    "--kv-prefault": ("1", None),  # a switch: shown as the bare flag
    "--metrics-listen": ("127.0.0.1:9999", "127.0.0.1:9999"),
    "--log-format": ("json", "json"),
    "--log-level": ("debug", "debug"),
    "--kv-dir": ("/tmp/attnd-kvdir", "/tmp/attnd-kvdir"),
    "--kv-disk": ("1Mi", "1048576"),
    "--kv-host": ("1Mi", "1048576"),
    "--kv-prefetch": ("2", "2"),
    "--kv-io-depth": ("8", "8"),
    "--durable": ("batch", "batch"),
    "--durable-window-ms": ("5", "5"),
    "--durable-segment": ("2Mi", "2097152"),
    "--durable-checkpoint": ("1Mi", "1048576"),
    "--tls-cert": ("/tmp/attnd-cert.pem", "/tmp/attnd-cert.pem"),
    "--tls-key": ("/tmp/attnd-key.pem", "/tmp/attnd-key.pem"),
    "--tls-client-ca": ("/tmp/attnd-ca.pem", "/tmp/attnd-ca.pem"),
    "--token-file": ("/tmp/attnd-tokens", "/tmp/attnd-tokens"),
    "--tenant-max-sessions": ("9", "9"),
    "--tenant-kv-memory": ("1Mi", "1048576"),
    "--session-idle-ttl": ("10m", "600000ms"),
    "--grpc-keepalive-ms": ("1000", "1000"),
    "--grpc-keepalive-timeout-ms": ("2000", "2000"),
    "--handshake-timeout-ms": ("3000", "3000"),
    "--max-streams": ("17", "17"),
    "--grpc-memory": ("64Mi", "67108864"),
}


def print_config(env=None, args=()):
    e = {k: v for k, v in os.environ.items() if not k.startswith("ATTND_")}
    e.update(env or {})
    return subprocess.run([ATTND, "--print-config", *args], capture_output=True, text=True,
                          env=e, timeout=60)


class Table(unittest.TestCase):
    def test_config_md_is_generated_from_the_current_help(self):
        r = subprocess.run([sys.executable, os.path.join(SRC, "deploy", "config_table.py"),
                            "--check", ATTND], capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def test_every_option_with_a_variable_has_a_sample_here(self):
        for flag, _, var, _ in config_table.options(ATTND):
            if var:
                self.assertIn(flag, SAMPLES, f"{flag} ({var}): add a sample value to SAMPLES")


class Variables(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.groupfile = os.path.join(cls.tmp.name, "group")
        with open(cls.groupfile, "w") as f:
            f.write("127.0.0.1:1\n127.0.0.1:2\n")
        base = print_config()
        assert base.returncode == 0, base.stderr
        cls.defaults = base.stdout.splitlines()

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_each_variable_sets_its_option(self):
        for flag, _, var, _ in config_table.options(ATTND):
            if not var:
                continue
            value, shown = SAMPLES[flag]
            value = value.replace("@groupfile", self.groupfile)
            line = flag if shown is None else f"{flag}={shown.replace('@groupfile', self.groupfile)}"
            with self.subTest(variable=var):
                self.assertNotIn(line, self.defaults, "the sample must differ from the default")
                r = print_config({var: value})
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertIn(line, r.stdout.splitlines())

    def test_a_flag_wins_over_its_variable(self):
        r = print_config({"ATTND_THREADS": "3"}, ["--threads", "5"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("--threads=5", r.stdout.splitlines())

    def test_a_malformed_variable_is_exit_2_naming_it(self):
        r = print_config({"ATTND_PAGE_SIZE": "sixty-four"})
        self.assertEqual(r.returncode, 2)
        self.assertIn("ATTND_PAGE_SIZE", r.stderr)
        r = print_config({"ATTND_LOG_FORMAT": "xml"})
        self.assertEqual(r.returncode, 2)
        self.assertIn("--log-format", r.stderr)

    def test_print_config_checks_the_group_like_a_start(self):
        r = print_config({"ATTND_GROUP": "127.0.0.1:1", "ATTND_RANK": "3"})
        self.assertEqual(r.returncode, 2)
        self.assertIn("--rank", r.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
