"""The health service names Kubernetes probes ask (deploy/k8s): "liveness"
and "readiness", beside "" and "attnd.v1.Group", answered by a real attnd
and read with the real attnd-cli (grpc.health.v1.Health/Check)."""
import shutil
import signal
import tempfile
import unittest

from attnd_proc import Attnd, group_args, wait_for


class LoneWorker(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.a = Attnd(["--model", "tiny-gqa"], metrics=False)

    @classmethod
    def tearDownClass(cls):
        cls.a.close()

    def test_liveness_is_serving(self):
        self.assertEqual(self.a.health("liveness"), "SERVING")

    def test_readiness_is_serving_when_not_draining(self):
        self.assertEqual(self.a.health("readiness"), "SERVING")

    def test_an_unknown_service_name_is_not_found_naming_the_known_ones(self):
        r = self.a.cli("health", "livenes")
        self.assertEqual(r.returncode, 1)
        self.assertIn("NOT_FOUND", r.stderr)
        self.assertIn('"liveness"', r.stderr)
        self.assertIn('"readiness"', r.stderr)


class Draining(unittest.TestCase):
    """SIGTERM with --drain-delay-ms: attnd keeps answering while it drains."""

    def test_readiness_drops_at_sigterm_while_liveness_stays_serving(self):
        a = Attnd(["--model", "tiny-gqa", "--drain-delay-ms", "60000"])
        try:
            self.assertEqual(a.health("readiness"), "SERVING")
            a.proc.send_signal(signal.SIGTERM)
            wait_for(lambda: a.health("readiness") == "NOT_SERVING", "readiness to drop")
            self.assertEqual(a.health("liveness"), "SERVING")
            text = a.scrape()
            self.assertIn("\nattnd_draining 1\n", text)
            self.assertIn("\nattnd_ready 0\n", text)
            # a second signal cuts the delay short; the drain ends with exit 0
            self.assertEqual(a.stop(), 0)
        finally:
            a.close()


class GroupWithAMissingRank(unittest.TestCase):
    """Rank 0 of two serves while rank 1 is not up yet (--group-connect-ms 0)."""

    @classmethod
    def setUpClass(cls):
        cls.gdir = tempfile.mkdtemp(prefix="attnd-probe-group-")
        cls.r0 = Attnd(["--model", "tiny-gqa", *group_args(2, 0, cls.gdir)], metrics=False)
        cls.r1 = None

    @classmethod
    def tearDownClass(cls):
        for r in (cls.r0, cls.r1):
            if r:
                r.close()
        shutil.rmtree(cls.gdir, ignore_errors=True)

    def test_1_readiness_is_not_serving_while_a_peer_is_missing(self):
        self.assertEqual(self.r0.health("readiness"), "NOT_SERVING")
        self.assertEqual(self.r0.health("attnd.v1.Group"), "NOT_SERVING")

    def test_2_liveness_stays_serving_while_a_peer_is_missing(self):
        # a rank waiting for its peers must not be restarted for it
        self.assertEqual(self.r0.health("liveness"), "SERVING")
        self.assertEqual(self.r0.health(""), "SERVING")

    def test_3_readiness_turns_serving_once_the_peer_joins(self):
        type(self).r1 = Attnd(["--model", "tiny-gqa", *group_args(2, 1, self.gdir)],
                              metrics=False)
        wait_for(lambda: self.r0.health("readiness") == "SERVING", "rank 0 to be ready")
        # each rank marks its peer up after its own HELLO round trip: rank 1
        # may see it a moment after rank 0 does
        wait_for(lambda: self.r1.health("readiness") == "SERVING", "rank 1 to be ready")
        self.assertEqual(self.r0.health("attnd.v1.Group"), "SERVING")

    def test_4_readiness_drops_when_the_peer_dies_and_liveness_does_not(self):
        if not self.r1:
            self.skipTest("needs test_3's rank 1")
        self.r1.kill()
        wait_for(lambda: self.r0.health("readiness") == "NOT_SERVING",
                 "rank 0 to notice its peer is gone")
        self.assertEqual(self.r0.health("liveness"), "SERVING")


if __name__ == "__main__":
    unittest.main(verbosity=2)
