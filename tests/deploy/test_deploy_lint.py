"""deploy/ as files: hadolint on the Dockerfiles, yamllint on every YAML
file, the Kubernetes manifests and the Compose file parsed and their
required fields checked against each other (and rendered with
`kubectl kustomize` where kubectl is installed), the Grafana dashboard
parsed, and the images' runtime-package list derived from the real build.
No container engine runs here: this is what can be checked of an image
without one (the entrypoint and attnd are exercised by test_entrypoint)."""
import glob
import json
import os
import shutil
import subprocess
import unittest

from attnd_proc import ATTND, CLI, SRC, skip_or_fail

try:
    import yaml
except ImportError:  # pragma: no cover
    skip_or_fail("python3 module yaml missing (apt-get install python3-yaml)")

DEPLOY = os.path.join(SRC, "deploy")
DOCKERFILES = sorted(glob.glob(os.path.join(DEPLOY, "docker", "Dockerfile*")))


def find_tool(name):
    tools = os.environ.get("ATTND_TOOLS",
                           os.path.join(os.path.expanduser("~"), ".cache", "attnd-tools"))
    for p in (shutil.which(name), os.path.join(tools, "bin", name)):
        if p and os.access(p, os.X_OK):
            return p
    return None


def load_all(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def manifests(kdir):
    """The objects of a kustomization's resources, by kind."""
    k = load_all(os.path.join(kdir, "kustomization.yaml"))[0]
    objs = {}
    for r in k["resources"]:
        for d in load_all(os.path.join(kdir, r)):
            objs.setdefault(d["kind"], []).append(d)
    return objs


def env_of(container):
    return {e["name"]: e.get("value") for e in container.get("env", [])}


class Lints(unittest.TestCase):
    def test_hadolint_passes_on_every_dockerfile(self):
        hadolint = find_tool("hadolint")
        if not hadolint:
            skip_or_fail("hadolint missing (deploy/install-lint-tools.sh)")
        self.assertEqual(len(DOCKERFILES), 2)
        r = subprocess.run([hadolint, "--failure-threshold", "info", *DOCKERFILES],
                           capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def test_yamllint_passes_on_every_yaml_file(self):
        yamllint = find_tool("yamllint")
        if not yamllint:
            skip_or_fail("yamllint missing (apt-get install yamllint)")
        files = sorted(glob.glob(os.path.join(DEPLOY, "**", "*.yaml"), recursive=True))
        self.assertGreaterEqual(len(files), 8)
        r = subprocess.run([yamllint, "-s", "-c", os.path.join(DEPLOY, ".yamllint.yaml"),
                            *files], capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def test_the_shell_scripts_parse(self):
        for sh in ("docker/attnd-entrypoint.sh", "docker/runtime-packages.sh"):
            r = subprocess.run(["/bin/sh", "-n", os.path.join(DEPLOY, sh)],
                               capture_output=True, text=True)
            self.assertEqual(r.returncode, 0, f"{sh}: {r.stderr}")


class Dockerfiles(unittest.TestCase):
    def test_images_are_multi_stage_non_root_with_exec_form_entrypoint_and_healthcheck(self):
        for path in DOCKERFILES:
            text = open(path).read()
            lines = [ln.strip() for ln in text.splitlines()]
            with self.subTest(dockerfile=os.path.basename(path)):
                self.assertGreaterEqual(sum(ln.startswith("FROM ") for ln in lines), 2)
                self.assertIn("USER 10001:10001", lines)
                self.assertIn('ENTRYPOINT ["/usr/bin/tini", "--", "attnd-entrypoint"]', lines)
                self.assertIn('CMD ["attnd-entrypoint", "healthcheck", "liveness"]', lines)
                self.assertIn("COPY --from=build /opt/attnd /opt/attnd", lines)

    def test_the_cuda_image_builds_on_an_nvidia_cuda_base(self):
        text = open(os.path.join(DEPLOY, "docker", "Dockerfile.cuda")).read()
        self.assertIn("FROM nvidia/cuda:${CUDA_VERSION}-runtime-${UBUNTU}", text)
        self.assertIn("-DATTND_CUDA=ON", text)

    def test_runtime_packages_of_the_real_build_are_installed_packages(self):
        r = subprocess.run([os.path.join(DEPLOY, "docker", "runtime-packages.sh"), ATTND,
                            CLI], capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        pkgs = r.stdout.split()
        for want in ("libgrpc", "libprotobuf-c", "libucx", "libmicrohttpd"):
            self.assertTrue(any(p.startswith(want) for p in pkgs), f"{want} not in {pkgs}")
        q = subprocess.run(["dpkg-query", "-W", "-f", "${Status}\n", *pkgs],
                           capture_output=True, text=True)
        self.assertEqual(q.stdout.split("\n")[:-1], ["install ok installed"] * len(pkgs))


class Kubernetes(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.objs = manifests(os.path.join(DEPLOY, "k8s", "base"))
        cls.sts = cls.objs["StatefulSet"][0]
        cls.pod = cls.sts["spec"]["template"]["spec"]
        cls.c = cls.pod["containers"][0]
        cls.env = env_of(cls.c)
        cls.headless = [s for s in cls.objs["Service"] if s["spec"].get("clusterIP") == "None"]

    def test_every_object_has_api_version_kind_and_name(self):
        for kind, objs in self.objs.items():
            for o in objs:
                self.assertTrue(o.get("apiVersion"), kind)
                self.assertTrue(o.get("metadata", {}).get("name"), kind)

    def test_the_statefulset_names_a_headless_service_that_publishes_unready_ranks(self):
        self.assertEqual(len(self.headless), 1)
        svc = self.headless[0]
        self.assertEqual(self.sts["spec"]["serviceName"], svc["metadata"]["name"])
        self.assertIs(svc["spec"]["publishNotReadyAddresses"], True)
        self.assertEqual(self.sts["spec"]["podManagementPolicy"], "Parallel")

    def test_selectors_match_the_pod_labels(self):
        labels = self.sts["spec"]["template"]["metadata"]["labels"]
        sel = self.sts["spec"]["selector"]["matchLabels"]
        self.assertLessEqual(sel.items(), labels.items())
        for svc in self.objs["Service"]:
            self.assertLessEqual(svc["spec"]["selector"].items(), labels.items())
        for pdb in self.objs["PodDisruptionBudget"]:
            self.assertLessEqual(pdb["spec"]["selector"]["matchLabels"].items(), labels.items())
            self.assertEqual(pdb["spec"]["maxUnavailable"], 1)

    def test_the_group_is_as_large_as_the_statefulset_and_named_by_its_pods(self):
        self.assertEqual(int(self.env["ATTND_GROUP_SIZE"]), self.sts["spec"]["replicas"])
        name, svc = self.sts["metadata"]["name"], self.sts["spec"]["serviceName"]
        self.assertTrue(self.env["ATTND_GROUP_HOST_TEMPLATE"].startswith(
            f"{name}-{{rank}}.{svc}."), self.env["ATTND_GROUP_HOST_TEMPLATE"])
        ports = {p["name"]: p["containerPort"] for p in self.c["ports"]}
        self.assertEqual(int(self.env["ATTND_GROUP_PORT"]), ports["ucx-group"])
        self.assertEqual(self.env["ATTND_METRICS_LISTEN"], f"0.0.0.0:{ports['metrics']}")
        self.assertEqual(self.env["ATTND_LISTEN"], f"0.0.0.0:{ports['grpc']}")

    def test_probes_are_native_grpc_with_distinct_services(self):
        grpc_port = {p["name"]: p["containerPort"] for p in self.c["ports"]}["grpc"]
        probes = {k: self.c[k]["grpc"] for k in ("startupProbe", "livenessProbe",
                                                 "readinessProbe")}
        for k, g in probes.items():
            self.assertEqual(g["port"], grpc_port, k)
        self.assertEqual(probes["livenessProbe"]["service"], "liveness")
        self.assertEqual(probes["readinessProbe"]["service"], "readiness")
        self.assertEqual(probes["startupProbe"]["service"], "liveness")
        s = self.c["startupProbe"]
        self.assertGreaterEqual(s["periodSeconds"] * s["failureThreshold"], 120,
                                "startup must allow a slow start")

    def test_the_grace_period_outlasts_the_drain_delay_and_the_drain(self):
        delay_s = int(self.env["ATTND_DRAIN_DELAY_MS"]) / 1000
        drain_s = int(self.env["ATTND_SHUTDOWN_GRACE_MS"]) / 1000
        period = self.c["readinessProbe"]["periodSeconds"]
        # the delay lets the readiness probe see NOT_SERVING before calls are refused
        self.assertGreaterEqual(delay_s, period)
        self.assertGreater(self.pod["terminationGracePeriodSeconds"], delay_s + drain_s)

    def test_pods_run_unprivileged(self):
        sc = self.pod["securityContext"]
        self.assertIs(sc["runAsNonRoot"], True)
        self.assertEqual(sc["runAsUser"], 10001)
        self.assertIs(self.c["securityContext"]["allowPrivilegeEscalation"], False)

    def test_each_rank_gets_a_persistent_volume_for_the_disk_tier(self):
        vct = self.sts["spec"]["volumeClaimTemplates"]
        self.assertEqual([v["metadata"]["name"] for v in vct], ["kv-disk"])
        mounts = {m["name"] for m in self.c["volumeMounts"]}
        self.assertIn("kv-disk", mounts)

    def test_the_cuda_overlay_asks_for_a_gpu_and_the_cuda_image(self):
        kdir = os.path.join(DEPLOY, "k8s", "cuda")
        k = load_all(os.path.join(kdir, "kustomization.yaml"))[0]
        self.assertEqual(k["images"][0]["newTag"], "cuda")
        patch = load_all(os.path.join(kdir, k["patches"][0]["path"]))[0]
        c = patch["spec"]["template"]["spec"]["containers"][0]
        self.assertEqual(c["resources"]["limits"]["nvidia.com/gpu"], 1)
        self.assertEqual(env_of(c)["ATTND_DEVICE"], "cuda:0")

    def test_kustomize_renders_both_variants(self):
        kubectl = shutil.which("kubectl")
        if not kubectl:
            self.skipTest("kubectl not installed: the kustomize rendering is not checked")
        for variant in ("base", "cuda"):
            with self.subTest(variant=variant):
                r = subprocess.run([kubectl, "kustomize", os.path.join(DEPLOY, "k8s", variant)],
                                   capture_output=True, text=True, timeout=120)
                self.assertEqual(r.returncode, 0, r.stderr)
                docs = [d for d in yaml.safe_load_all(r.stdout) if d]
                kinds = sorted(d["kind"] for d in docs)
                self.assertEqual(kinds, ["PodDisruptionBudget", "Service", "Service",
                                         "StatefulSet"])
                sts = [d for d in docs if d["kind"] == "StatefulSet"][0]
                c = sts["spec"]["template"]["spec"]["containers"][0]
                if variant == "cuda":
                    self.assertEqual(c["image"], "attnd:cuda")
                    self.assertEqual(c["resources"]["limits"]["nvidia.com/gpu"], 1)
                    self.assertEqual(env_of(c)["ATTND_DEVICE"], "cuda:0")
                    self.assertEqual(env_of(c)["ATTND_GROUP_SIZE"], "2")  # base kept
                else:
                    self.assertEqual(c["image"], "attnd:cpu")


class Compose(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.doc = load_all(os.path.join(DEPLOY, "compose.yaml"))[0]
        cls.svc = cls.doc["services"]

    def test_two_ranks_and_a_bench_that_waits_for_both_to_be_ready(self):
        ranks = sorted(n for n in self.svc if n.startswith("attnd-"))
        self.assertEqual(ranks, ["attnd-0", "attnd-1"])
        deps = self.svc["bench"]["depends_on"]
        self.assertEqual({n: d["condition"] for n, d in deps.items()},
                         {r: "service_healthy" for r in ranks})
        self.assertEqual(self.svc["bench"]["entrypoint"], ["attnd-bench"])
        cmd = self.svc["bench"]["command"]
        self.assertEqual(cmd[cmd.index("--target") + 1], "attnd-0:7700")
        self.assertIn("--check", cmd)

    def test_ranks_agree_on_the_group_and_their_hostnames_give_their_rank(self):
        ranks = [n for n in self.svc if n.startswith("attnd-")]
        for n in ranks:
            s = self.svc[n]
            with self.subTest(service=n):
                self.assertEqual(s["hostname"], n)
                self.assertEqual(int(s["environment"]["ATTND_GROUP_SIZE"]), len(ranks))
                self.assertEqual(s["environment"]["ATTND_GROUP_HOST_TEMPLATE"], "attnd-{rank}")
                self.assertEqual(s["healthcheck"]["test"],
                                 ["CMD", "attnd-entrypoint", "healthcheck", "readiness"])

    def test_the_build_names_an_existing_dockerfile_and_stop_outlasts_the_drain(self):
        s = self.svc["attnd-0"]
        self.assertTrue(os.path.isfile(os.path.join(DEPLOY, s["build"]["context"],
                                                    s["build"]["dockerfile"])))
        drain_s = int(s["environment"]["ATTND_SHUTDOWN_GRACE_MS"]) / 1000
        self.assertGreater(int(s["stop_grace_period"].rstrip("s")), drain_s)


class Dashboard(unittest.TestCase):
    def test_the_grafana_dashboard_parses_and_every_panel_queries_prometheus(self):
        dash = json.load(open(os.path.join(DEPLOY, "grafana", "attnd.json")))
        self.assertTrue(dash["uid"])
        self.assertGreaterEqual(len(dash["panels"]), 8)
        for p in dash["panels"]:
            with self.subTest(panel=p["title"]):
                self.assertEqual(p["datasource"]["type"], "prometheus")
                self.assertTrue(p["targets"])
                for t in p["targets"]:
                    self.assertIn("attnd_", t["expr"])


if __name__ == "__main__":
    unittest.main(verbosity=2)
