"""The Prometheus endpoint (--metrics-listen) of a real 2-rank group under a
short real load (attnd-bench over gRPC and over UCX, both led by rank 0),
scraped over HTTP and parsed with the official parser
(prometheus_client.parser). Every family the README's metrics table lists
must be there, typed, and agree with what the clients did: the request
counters with the calls attnd-bench completed, the histograms with the
counters, the KV page states with the pool size, the group gauges with the
group."""
import json
import os
import re
import shutil
import subprocess
import tempfile
import unittest
import urllib.error
import urllib.request

from attnd_proc import BENCH, SRC, Attnd, group_args, skip_or_fail, wait_for

try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError:  # pragma: no cover
    skip_or_fail("python3 module prometheus_client missing (apt-get install "
                 "python3-prometheus-client, or deploy/install-deps.sh)")

# name -> type; the README's metrics table (checked by test_readme_lists_every_family)
FAMILIES = {
    "attnd_requests": "counter",
    "attnd_request_duration_seconds": "histogram",
    "attnd_attend_phase_seconds": "histogram",
    "attnd_calls_in_flight": "gauge",
    "attnd_received_bytes": "counter",
    "attnd_sent_bytes": "counter",
    "attnd_kv_pages": "gauge",
    "attnd_kv_bytes": "gauge",
    "attnd_kv_page_size_bytes": "gauge",
    "attnd_kv_read_bytes": "counter",
    "attnd_kv_dense_read_bytes": "counter",
    "attnd_select_read_bytes": "counter",
    "attnd_select_seconds": "counter",
    "attnd_kv_pages_evicted": "counter",
    "attnd_kv_appended_tokens": "counter",
    "attnd_attend_sequences": "counter",
    "attnd_sessions": "gauge",
    "attnd_sessions_limit": "gauge",
    "attnd_kv_pages_held": "gauge",
    "attnd_kv_pages_capacity": "gauge",
    "attnd_kv_below_slots": "gauge",
    "attnd_kv_below_slot_bytes": "gauge",
    "attnd_kv_pages_moved": "counter",
    "attnd_kv_pages_prefetched": "counter",
    "attnd_kv_load_waits": "counter",
    "attnd_kv_pages_bad": "counter",
    "attnd_kv_write_failures": "counter",
    "attnd_durable": "gauge",
    "attnd_wal_written_bytes": "counter",
    "attnd_wal_syncs": "counter",
    "attnd_checkpoints": "counter",
    "attnd_sessions_recovered": "gauge",
    "attnd_sessions_lost": "gauge",
    "attnd_group_ranks": "gauge",
    "attnd_group_rank": "gauge",
    "attnd_group_peers_connected": "gauge",
    "attnd_group_peer_up": "gauge",
    "attnd_group_peer_failures": "counter",
    "attnd_group_sent_bytes": "counter",
    "attnd_group_received_bytes": "counter",
    "attnd_ready": "gauge",
    "attnd_draining": "gauge",
    "attnd_uptime_seconds": "gauge",
    "attnd_build_info": "gauge",
}
PHASES = ("queue", "validate", "kernel", "fanout", "encode")


def parse(text):
    """{family name: Metric} (the parser names counters without _total)."""
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(fams, family, sample=None, **labels):
    for s in fams[family].samples:
        if (sample is None or s.name == sample) and all(
                s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    return 0.0


def requests(fams, transport, method, code="OK"):
    return value(fams, "attnd_requests", "attnd_requests_total", transport=transport,
                 method=method, code=code)


def run_bench(target, transport, sessions=2, steps=3, batch=1):
    out = tempfile.NamedTemporaryFile(suffix=".json", delete=False)
    out.close()
    try:
        r = subprocess.run([BENCH, "--target", target, "--transport", transport,
                            "--model", "tiny-gqa", "--sessions", str(sessions), "--batch", str(batch),
                            "--prompt-len", "64", "--steps", str(steps), "--warmup", "0",
                            "--no-progress", "--json", out.name],
                           capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            raise AssertionError(f"attnd-bench --transport {transport}: exit {r.returncode}\n"
                                 f"{r.stdout}{r.stderr}")
        with open(out.name) as f:
            return json.load(f)
    finally:
        os.unlink(out.name)


class ScrapeAfterLoad(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.gdir = tempfile.mkdtemp(prefix="attnd-metrics-group-")
        common = ["--model", "tiny-gqa"]
        cls.r0 = Attnd([*common, "--ucx-listen", "auto", *group_args(2, 0, cls.gdir)])
        cls.r1 = Attnd([*common, *group_args(2, 1, cls.gdir)])
        try:
            # both ranks: each marks its peer up after its own HELLO round trip
            wait_for(lambda: cls.r0.health("readiness") == "SERVING" and
                     cls.r1.health("readiness") == "SERVING", "the group to connect")
            cls.before = parse(cls.r0.scrape())
            cls.grpc = run_bench(cls.r0.target, "grpc")
            cls.ucx = run_bench(cls.r0.target, "ucx")
            # one failed call, of a known method and code
            cls.r0.cli("health", "no-such-service")
            cls.stats = cls.r0.cli("stats", check=True).stdout
            cls.text = cls.r0.scrape()
            cls.after = parse(cls.text)
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        for r in (cls.r0, cls.r1):
            r.close()
        shutil.rmtree(cls.gdir, ignore_errors=True)

    def delta(self, fn, *args):
        return fn(self.after, *args) - fn(self.before, *args)

    def test_every_family_is_present_with_its_type_and_help(self):
        for name, typ in FAMILIES.items():
            with self.subTest(family=name):
                self.assertIn(name, self.after)
                self.assertEqual(self.after[name].type, typ)
                self.assertTrue(self.after[name].documentation)

    def test_every_name_has_the_attnd_prefix_and_counters_end_in_total(self):
        for f in self.after.values():
            self.assertTrue(f.name.startswith("attnd_"), f.name)
            for s in f.samples:
                if f.type == "counter":
                    self.assertTrue(s.name.endswith("_total"), s.name)

    def test_attend_counters_equal_the_calls_the_clients_completed(self):
        self.assertEqual(self.delta(requests, "grpc", "Attend"),
                         self.grpc["server_counters"]["client_calls"])
        self.assertEqual(self.delta(requests, "ucx", "Attend"),
                         self.ucx["server_counters"]["client_calls"])
        self.assertGreater(self.ucx["server_counters"]["client_calls"], 0)

    def test_control_calls_are_counted_per_session(self):
        # two runs of 2 sessions each: every session created and closed over gRPC
        self.assertEqual(self.delta(requests, "grpc", "CreateSession"), 4)
        self.assertEqual(self.delta(requests, "grpc", "CloseSession"), 4)
        self.assertGreater(self.delta(requests, "grpc", "AppendKV"), 0)

    def test_a_failed_call_is_counted_under_its_status_code(self):
        self.assertEqual(self.delta(requests, "grpc", "Check", "NOT_FOUND"), 1)

    def test_duration_histograms_count_every_call_in_cumulative_buckets(self):
        fam = self.after["attnd_request_duration_seconds"]
        series = {}
        for s in fam.samples:
            key = (s.labels["transport"], s.labels["service"], s.labels["method"])
            series.setdefault(key, []).append(s)
        self.assertIn(("ucx", "attnd.v1.Attnd", "Attend"), series)
        for (transport, service, method), samples in series.items():
            with self.subTest(method=method, transport=transport):
                buckets = [s for s in samples if s.name.endswith("_bucket")]
                counts = [s.value for s in buckets]
                self.assertEqual(counts, sorted(counts), "buckets must be cumulative")
                self.assertEqual(buckets[-1].labels["le"], "+Inf")
                count = [s.value for s in samples if s.name.endswith("_count")][0]
                total = [s.value for s in samples if s.name.endswith("_sum")][0]
                self.assertEqual(count, buckets[-1].value)
                calls = sum(s.value for s in self.after["attnd_requests"].samples
                            if (s.labels["transport"], s.labels["service"],
                                s.labels["method"]) == (transport, service, method))
                self.assertEqual(count, calls)
                if count:
                    self.assertGreater(total, 0.0)

    def test_the_attend_split_has_one_observation_per_successful_attend(self):
        attends = requests(self.after, "grpc", "Attend") + requests(self.after, "ucx", "Attend")
        for ph in PHASES:
            with self.subTest(phase=ph):
                n = value(self.after, "attnd_attend_phase_seconds",
                          "attnd_attend_phase_seconds_count", phase=ph)
                self.assertEqual(n, attends)
        # a group leader spends time fanning out to its peer
        self.assertGreater(value(self.after, "attnd_attend_phase_seconds",
                                 "attnd_attend_phase_seconds_sum", phase="fanout"), 0.0)
        self.assertGreater(value(self.after, "attnd_attend_phase_seconds",
                                 "attnd_attend_phase_seconds_sum", phase="kernel"), 0.0)

    def test_bytes_cover_at_least_the_queries_and_outputs_of_each_transport(self):
        # tiny-gqa, bf16, batch 1: q [1, 8, 32] and out [1, 8, 32] = 512 bytes each
        for transport, run in (("grpc", self.grpc), ("ucx", self.ucx)):
            calls = run["server_counters"]["client_calls"]
            with self.subTest(transport=transport):
                got_rx = value(self.after, "attnd_received_bytes",
                               "attnd_received_bytes_total", transport=transport)
                got_tx = value(self.after, "attnd_sent_bytes", "attnd_sent_bytes_total",
                               transport=transport)
                self.assertGreaterEqual(got_rx, calls * 512)
                self.assertGreaterEqual(got_tx, calls * 512)

    def test_kv_page_states_add_up_to_the_pool_and_bytes_to_pages_times_size(self):
        m = re.search(r"pages\s+(\d+) used, (\d+) reserved, (\d+) total, (\d+) bytes each",
                      self.stats)
        self.assertIsNotNone(m, self.stats)
        total, page_bytes = int(m.group(3)), int(m.group(4))
        pages = {s.labels["state"]: s.value for s in self.after["attnd_kv_pages"].samples}
        self.assertEqual(set(pages), {"used", "reserved", "free"})
        self.assertEqual(sum(pages.values()), total)
        self.assertEqual(value(self.after, "attnd_kv_page_size_bytes"), page_bytes)
        for s in self.after["attnd_kv_bytes"].samples:
            self.assertEqual(s.value, pages[s.labels["state"]] * page_bytes)

    def test_kv_and_session_counters_moved_with_the_load(self):
        self.assertGreater(self.delta(value, "attnd_kv_read_bytes"), 0)
        # the load is dense: what a dense call reads is what was read
        self.assertEqual(self.delta(value, "attnd_kv_dense_read_bytes"),
                         self.delta(value, "attnd_kv_read_bytes"))
        self.assertEqual(self.delta(value, "attnd_select_read_bytes"), 0)
        self.assertGreater(self.delta(value, "attnd_kv_appended_tokens"), 0)
        self.assertGreater(self.delta(value, "attnd_attend_sequences"), 0)
        self.assertEqual(value(self.after, "attnd_sessions"), 0)  # all closed again
        self.assertEqual(value(self.after, "attnd_sessions_limit"), 1024)

    def test_group_gauges_describe_a_whole_two_rank_group(self):
        self.assertEqual(value(self.after, "attnd_group_ranks"), 2)
        self.assertEqual(value(self.after, "attnd_group_rank"), 0)
        self.assertEqual(value(self.after, "attnd_group_peers_connected"), 1)
        self.assertEqual(value(self.after, "attnd_group_peer_up", peer="1"), 1)
        self.assertEqual(value(self.after, "attnd_group_peer_failures"), 0)
        r1 = parse(self.r1.scrape())
        self.assertEqual(value(r1, "attnd_group_rank"), 1)
        self.assertEqual(value(r1, "attnd_group_peer_up", peer="0"), 1)

    def test_rank_to_rank_bytes_cover_the_queries_the_leader_scattered(self):
        # every Attend of the load reached rank 1 with its query share
        # (sequence mode: the whole q [1, 8, 32] bf16 = 512 bytes) and came back
        calls = (self.grpc["server_counters"]["client_calls"] +
                 self.ucx["server_counters"]["client_calls"])
        sent = self.delta(value, "attnd_group_sent_bytes")
        got = self.delta(value, "attnd_group_received_bytes")
        self.assertGreaterEqual(sent, calls * 512)
        self.assertGreater(got, calls * 64)  # at least a 64-byte header each
        r1 = parse(self.r1.scrape())
        self.assertGreaterEqual(value(r1, "attnd_group_received_bytes"), sent)

    def test_process_gauges(self):
        self.assertEqual(value(self.after, "attnd_ready"), 1)
        self.assertEqual(value(self.after, "attnd_draining"), 0)
        self.assertGreater(value(self.after, "attnd_uptime_seconds"), 0)
        info = self.after["attnd_build_info"].samples[0]
        self.assertEqual(info.labels["model"], "tiny-gqa")
        self.assertEqual(info.labels["shard"], "sequence")
        self.assertEqual(info.value, 1)

    def test_the_dashboard_queries_only_exported_series(self):
        with open(os.path.join(SRC, "deploy", "grafana", "attnd.json")) as f:
            dash = json.load(f)
        exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
        self.assertGreater(len(exprs), 5)
        exported = {s.name for f in self.after.values() for s in f.samples}
        for e in exprs:
            for name in re.findall(r"\battnd_[a-z_]+", e):
                with self.subTest(expr=e, name=name):
                    self.assertIn(name, exported)

    def test_readme_lists_every_family(self):
        with open(os.path.join(SRC, "README.md")) as f:
            readme = f.read()
        for name, typ in FAMILIES.items():
            shown = name + "_total" if typ == "counter" else name
            with self.subTest(family=shown):
                self.assertTrue(f"`{shown}" in readme, f"README lacks `{shown}`")


class TiersAndDurability(unittest.TestCase):
    """A lone worker whose sessions outgrow its memory (12 sessions of 2
    pages a layer, 3 layers: 72 pages, in 48 memory pages) with a disk tier
    and a sync write-ahead log: the tier and log families follow what it
    did. Prefill alone leaves pages below memory and decode attends every
    layer of every session, so pages move both ways whatever the timing;
    without prefetch an Attend can always make room by moving its own
    sessions' other layers down (no waiting on the other micro-batch)."""

    @classmethod
    def setUpClass(cls):
        cls.kdir = tempfile.mkdtemp(prefix="attnd-metrics-tiers-")
        cls.a = Attnd(["--model", "tiny-gqa", "--kv-memory", "768Ki", "--kv-dir", cls.kdir,
                       "--kv-disk", "8Mi", "--kv-prefetch", "0", "--durable"])
        try:
            run_bench(cls.a.target, "grpc", sessions=12, steps=3, batch=6)
            cls.stats = cls.a.cli("stats", check=True).stdout
            cls.after = parse(cls.a.scrape())
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.a.close()
        shutil.rmtree(cls.kdir, ignore_errors=True)

    def test_pages_went_down_to_disk_and_came_back(self):
        m = re.search(r"pages moved down (\d+), up (\d+)", self.stats)
        self.assertIsNotNone(m, self.stats)
        down = value(self.after, "attnd_kv_pages_moved", direction="down")
        up = value(self.after, "attnd_kv_pages_moved", direction="up")
        self.assertGreater(int(m.group(1)), 0)
        self.assertGreater(int(m.group(2)), 0)
        # scraped after the stats call: nothing moves back
        self.assertGreaterEqual(down, int(m.group(1)))
        self.assertGreaterEqual(up, int(m.group(2)))
        self.assertEqual(value(self.after, "attnd_kv_pages_bad"), 0)
        self.assertEqual(value(self.after, "attnd_kv_write_failures"), 0)

    def test_slot_states_add_up_to_the_disk_tier(self):
        m = re.search(r"kv below\s+disk: (\d+) of (\d+) slots used, (\d+) bytes each", self.stats)
        self.assertIsNotNone(m, self.stats)
        slots = {s.labels["state"]: s.value for s in self.after["attnd_kv_below_slots"].samples}
        self.assertEqual(set(slots), {"used", "free"})
        self.assertEqual(sum(slots.values()), int(m.group(2)))
        self.assertEqual(value(self.after, "attnd_kv_below_slot_bytes"), int(m.group(3)))
        self.assertLessEqual(value(self.after, "attnd_kv_pages_held"),
                             value(self.after, "attnd_kv_pages_capacity"))

    def test_the_log_reports_sync_mode_and_the_bytes_it_wrote(self):
        self.assertEqual(value(self.after, "attnd_durable", mode="sync"), 1)
        m = re.search(r"(\d+) bytes written in (\d+) syncs", self.stats)
        self.assertIsNotNone(m, self.stats)
        self.assertGreater(int(m.group(1)), 0)
        # scraped after the stats call (a checkpoint may still write: not equal)
        self.assertGreaterEqual(value(self.after, "attnd_wal_written_bytes"), int(m.group(1)))
        self.assertGreaterEqual(value(self.after, "attnd_wal_syncs"), int(m.group(2)))
        self.assertGreater(int(m.group(2)), 0)
        self.assertEqual(value(self.after, "attnd_sessions_recovered"), 0)


class HttpSurface(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.a = Attnd(["--model", "tiny-gqa"])

    @classmethod
    def tearDownClass(cls):
        cls.a.close()

    def test_unknown_paths_are_404(self):
        url = self.a.metrics_url.replace("/metrics", "/nope")
        with self.assertRaises(urllib.error.HTTPError) as cm:
            urllib.request.urlopen(url, timeout=30)
        self.assertEqual(cm.exception.code, 404)

    def test_post_is_405(self):
        req = urllib.request.Request(self.a.metrics_url, data=b"x", method="POST")
        with self.assertRaises(urllib.error.HTTPError) as cm:
            urllib.request.urlopen(req, timeout=30)
        self.assertEqual(cm.exception.code, 405)

    def test_an_idle_lone_worker_shows_attend_at_zero_and_a_group_of_one(self):
        fams = parse(self.a.scrape())
        self.assertEqual(requests(fams, "grpc", "Attend"), 0)
        self.assertEqual(value(fams, "attnd_group_ranks"), 1)
        self.assertEqual(fams["attnd_group_peer_up"].samples, [])

    def test_a_worker_without_tiers_shows_no_tier_below_and_durability_off(self):
        fams = parse(self.a.scrape())
        self.assertEqual(value(fams, "attnd_durable", mode="off"), 1)
        self.assertEqual(sum(s.value for s in fams["attnd_kv_below_slots"].samples), 0)
        self.assertEqual(value(fams, "attnd_kv_pages_moved", direction="down"), 0)
        self.assertEqual(value(fams, "attnd_wal_written_bytes"), 0)

    def test_a_busy_metrics_port_fails_the_start_naming_the_flag(self):
        port = self.a.metrics_url.split(":")[2].split("/")[0]
        r = subprocess.run([self.a.proc.args[0], "--model", "tiny-gqa", "--listen",
                            "127.0.0.1:0", "--metrics-listen", f"127.0.0.1:{port}"],
                           capture_output=True, text=True, timeout=120)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("--metrics-listen", r.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
