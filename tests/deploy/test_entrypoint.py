"""The images' entrypoint (deploy/docker/attnd-entrypoint.sh) outside a
container: run by /bin/sh (dash, as in the images) with the real attnd
(`--print-config` shows what it was given), a real attnd started through it
(it must exec attnd, so that SIGTERM reaches attnd), and its healthcheck
mode against that attnd."""
import os
import signal
import subprocess
import tempfile
import unittest

from attnd_proc import ATTND, CLI, SRC, wait_for

ENTRY = os.path.join(SRC, "deploy", "docker", "attnd-entrypoint.sh")
TEMPLATE = "attnd-{rank}.attnd.ns.svc.cluster.local"


def entry(env, *args, timeout=60):
    e = {k: v for k, v in os.environ.items() if not k.startswith("ATTND_")}
    e.update({"ATTND_BIN": ATTND, "ATTND_CLI": CLI}, **env)
    return subprocess.run(["/bin/sh", ENTRY, *args], capture_output=True, text=True, env=e,
                          timeout=timeout)


def config(env, *args):
    r = entry(env, "--print-config", *args)
    if r.returncode != 0:
        raise AssertionError(f"exit {r.returncode}: {r.stderr}")
    return dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)


class GroupSettings(unittest.TestCase):
    def test_without_a_group_size_flags_and_variables_pass_through(self):
        c = config({"ATTND_THREADS": "3"}, "--model", "tiny-gqa")
        self.assertEqual(c["--threads"], "3")
        self.assertEqual(c["--model"], "tiny-gqa")
        self.assertEqual(c["--group"], "")

    def test_the_rank_is_the_hostnames_ordinal_and_the_group_comes_from_the_template(self):
        c = config({"HOSTNAME": "attnd-2", "ATTND_GROUP_SIZE": "4",
                    "ATTND_GROUP_HOST_TEMPLATE": TEMPLATE})
        self.assertEqual(c["--rank"], "2")
        self.assertEqual(c["--group"], ",".join([
            "attnd-0.attnd.ns.svc.cluster.local:7800",
            "attnd-1.attnd.ns.svc.cluster.local:7800",
            "0.0.0.0:7800",
            "attnd-3.attnd.ns.svc.cluster.local:7800"]))

    def test_port_and_own_bind_address_can_be_set(self):
        c = config({"HOSTNAME": "w-0", "ATTND_GROUP_SIZE": "2", "ATTND_GROUP_PORT": "9000",
                    "ATTND_GROUP_BIND": "10.1.2.3", "ATTND_GROUP_HOST_TEMPLATE": "w-{rank}"})
        self.assertEqual(c["--group"], "10.1.2.3:9000,w-1:9000")

    def test_an_explicit_rank_wins_over_the_hostname(self):
        c = config({"HOSTNAME": "attnd-2", "ATTND_RANK": "0", "ATTND_GROUP_SIZE": "3",
                    "ATTND_GROUP_HOST_TEMPLATE": TEMPLATE})
        self.assertEqual(c["--rank"], "0")
        self.assertTrue(c["--group"].startswith("0.0.0.0:7800,"))

    def test_an_explicit_group_is_kept(self):
        c = config({"HOSTNAME": "attnd-1", "ATTND_GROUP_SIZE": "2",
                    "ATTND_GROUP": "a:1,b:2", "ATTND_GROUP_HOST_TEMPLATE": TEMPLATE})
        self.assertEqual(c["--group"], "a:1,b:2")
        self.assertEqual(c["--rank"], "1")

    def test_a_flag_still_wins_over_what_the_entrypoint_derived(self):
        c = config({"HOSTNAME": "attnd-1", "ATTND_GROUP_SIZE": "2",
                    "ATTND_GROUP_HOST_TEMPLATE": TEMPLATE}, "--rank", "0")
        self.assertEqual(c["--rank"], "0")


class Errors(unittest.TestCase):
    def check(self, env, word):
        r = entry(env, "--print-config")
        self.assertEqual(r.returncode, 2, r.stdout)
        self.assertIn(word, r.stderr)

    def test_a_hostname_without_an_ordinal_is_exit_2_naming_attnd_rank(self):
        self.check({"HOSTNAME": "worker", "ATTND_GROUP_SIZE": "2",
                    "ATTND_GROUP_HOST_TEMPLATE": TEMPLATE}, "ATTND_RANK")

    def test_a_rank_outside_the_group_is_exit_2(self):
        self.check({"HOSTNAME": "attnd-5", "ATTND_GROUP_SIZE": "2",
                    "ATTND_GROUP_HOST_TEMPLATE": TEMPLATE}, "ATTND_RANK")

    def test_a_template_without_the_rank_placeholder_is_exit_2(self):
        self.check({"HOSTNAME": "attnd-0", "ATTND_GROUP_SIZE": "2",
                    "ATTND_GROUP_HOST_TEMPLATE": "attnd.svc"}, "ATTND_GROUP_HOST_TEMPLATE")

    def test_a_malformed_group_size_is_exit_2(self):
        self.check({"ATTND_GROUP_SIZE": "two"}, "ATTND_GROUP_SIZE")

    def test_attnds_own_checks_still_apply(self):
        self.check({"ATTND_PAGE_SIZE": "0"}, "ATTND_PAGE_SIZE")


class ExecAndHealth(unittest.TestCase):
    """attnd started through the entrypoint, as the images start it."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        port_file = os.path.join(cls.tmp.name, "port")
        env = {k: v for k, v in os.environ.items() if not k.startswith("ATTND_")}
        env.update(ATTND_BIN=ATTND, ATTND_MODEL="tiny-gqa", ATTND_LISTEN="127.0.0.1:0",
                   ATTND_PORT_FILE=port_file, ATTND_KV_MEMORY="32Mi", ATTND_THREADS="1")
        cls.p = subprocess.Popen(["/bin/sh", ENTRY], env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE)
        wait_for(lambda: os.path.exists(port_file) or cls.p.poll() is not None,
                 "attnd to listen")
        cls.port = int(open(port_file).read())

    @classmethod
    def tearDownClass(cls):
        if cls.p.poll() is None:
            cls.p.kill()
            cls.p.wait()
        cls.p.stderr.close()
        cls.tmp.cleanup()

    def test_1_the_entrypoint_execs_attnd_in_its_own_process(self):
        exe = os.readlink(f"/proc/{self.p.pid}/exe")
        self.assertEqual(os.path.realpath(exe), os.path.realpath(ATTND))

    def test_2_healthcheck_asks_liveness_by_default(self):
        r = entry({"ATTND_LISTEN": f"0.0.0.0:{self.port}"}, "healthcheck")
        self.assertEqual((r.returncode, r.stdout.strip()), (0, "SERVING"), r.stderr)

    def test_3_healthcheck_can_ask_readiness(self):
        r = entry({"ATTND_LISTEN": f"0.0.0.0:{self.port}"}, "healthcheck", "readiness")
        self.assertEqual((r.returncode, r.stdout.strip()), (0, "SERVING"), r.stderr)

    def test_4_sigterm_to_the_started_process_stops_attnd_with_exit_0(self):
        self.p.send_signal(signal.SIGTERM)
        self.assertEqual(self.p.wait(timeout=60), 0)

    def test_5_healthcheck_of_a_stopped_attnd_fails(self):
        if self.p.poll() is None:
            self.skipTest("needs test_4")
        r = entry({"ATTND_LISTEN": f"0.0.0.0:{self.port}",
                   "ATTND_HEALTHCHECK_DEADLINE_MS": "1000"}, "healthcheck")
        self.assertEqual(r.returncode, 1)
        self.assertEqual(r.stdout.strip(), "NOT_SERVING")


if __name__ == "__main__":
    unittest.main(verbosity=2)
