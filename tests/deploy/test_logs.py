"""attnd's stderr log (common/attnd_log.h): one line per event, as text or
JSON (--log-format), filtered by --log-level; nothing per Attend at the
default level; failed calls at debug level with the request's id."""
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

from attnd_proc import BENCH, Attnd, group_args, wait_for


def lines(a):
    return [ln for ln in a.stderr().splitlines() if ln.strip()]


class DefaultLevel(unittest.TestCase):
    def test_a_decode_logs_nothing_per_call_at_the_default_level(self):
        a = Attnd(["--model", "tiny-gqa"], metrics=False)
        try:
            before = lines(a)
            a.cli("demo", "--sessions", "2", "--prefill", "64", "--steps", "4", check=True)
            self.assertEqual(lines(a), before)
        finally:
            a.close()


class Json(unittest.TestCase):
    def test_every_line_is_one_json_object_with_ts_level_component_msg(self):
        a = Attnd(["--model", "tiny-gqa", "--log-format", "json", "--log-level", "debug"],
                  metrics=False)
        try:
            a.cli("health", "no-such-service")  # a failed call: one debug line
            self.assertEqual(a.stop(), 0)
            got = lines(a)
            self.assertGreaterEqual(len(got), 2)
            for ln in got:
                obj = json.loads(ln)
                self.assertTrue({"ts", "level", "component", "msg"} <= obj.keys(), ln)
                self.assertIn(obj["level"], ("error", "warn", "info", "debug"))
                self.assertTrue(obj["ts"].endswith("Z"), ln)
            failed = [json.loads(ln) for ln in got if "NOT_FOUND" in ln]
            self.assertEqual(len(failed), 1)
            self.assertEqual(failed[0]["level"], "debug")
            self.assertIn("grpc.health.v1.Health/Check", failed[0]["msg"])
        finally:
            a.close()

    def test_the_error_level_hides_info_lines(self):
        a = Attnd(["--model", "tiny-gqa", "--log-level", "error"], metrics=False)
        try:
            a.cli("health", "no-such-service")
            self.assertEqual(a.stop(), 0)
            self.assertEqual(lines(a), [])
        finally:
            a.close()


class DebugRequestIds(unittest.TestCase):
    def test_attends_failed_by_a_lost_peer_are_logged_with_their_request_ids(self):
        gdir = tempfile.mkdtemp(prefix="attnd-logs-group-")
        r0 = Attnd(["--model", "tiny-gqa", "--log-level", "debug", "--group-timeout-ms", "1000",
                    *group_args(2, 0, gdir)])
        r1 = Attnd(["--model", "tiny-gqa", *group_args(2, 1, gdir)], metrics=False)
        bench = None
        try:
            # both ranks: each marks its peer up after its own HELLO round trip
            wait_for(lambda: r0.health("readiness") == "SERVING" and
                     r1.health("readiness") == "SERVING", "the group to connect")
            bench = subprocess.Popen(
                [BENCH, "--target", r0.target, "--model", "tiny-gqa", "--sessions", "2",
                 "--batch", "1", "--prompt-len", "64", "--duration", "60", "--warmup", "0",
                 "--deadline-ms", "20000", "--no-progress"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_for(lambda: "method=\"Attend\",code=\"OK\"} 0" not in r0.scrape(),
                     "the bench to decode")
            r1.kill()
            self.assertNotEqual(bench.wait(timeout=120), 0)
            failed = [ln for ln in lines(r0)
                      if "/attnd.v1.Attnd/Attend: UNAVAILABLE" in ln and " debug " in ln]
            self.assertTrue(failed, r0.stderr())
            self.assertRegex(failed[0], r" request_id=[1-9][0-9]*$")
        finally:
            if bench and bench.poll() is None:
                bench.kill()
                bench.wait()
            r0.close()
            r1.close()
            shutil.rmtree(gdir, ignore_errors=True)


if __name__ == "__main__":
    unittest.main(verbosity=2)
