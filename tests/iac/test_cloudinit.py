"""The cloud-init templates: rendered with realistic values for every cloud, validated by the
real `cloud-init schema`, checked for the keys we rely on (cloud-init calls unknown keys valid),
cross-checked against Terraform's own templatefile(), and measured against AWS's 16 KB limit."""

from __future__ import annotations

import base64
import gzip
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
import unittest

unittest.util._MAX_LENGTH = 300  # keep failure messages about rendered files short

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import nodecfg  # noqa: E402
import tfbin  # noqa: E402
import tfrender  # noqa: E402

FP = "sha256:" + "3f" * 32
# The explicit-binary override (a mirror without the release's signature files).
AGENT_URL = "https://mirror.internal/swarmstrap/swarm-agent-0.2.0-x86_64"
AGENT_SHA = "9c" * 32
MIRROR = "https://mirror.internal/swarmstrap/releases"
OTHER_KEY = "RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3"


def make_cert(tmp: str, ip: str = "10.10.0.10") -> tuple[str, str]:
    key, crt = os.path.join(tmp, "k.pem"), os.path.join(tmp, "c.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", key, "-out", crt, "-days", "3650", "-subj", "/CN=swarm-coordinator",
         "-addext", f"subjectAltName=IP:{ip}"],
        check=True, capture_output=True,
    )
    with open(crt) as c, open(key) as k:
        return c.read(), k.read()


# One scenario per way the modules call the node template, plus the lab's.
NODE_SCENARIOS = {
    "digitalocean_manager": dict(
        cluster="prod", backend="coordinator", role="manager", target_managers=3,
        advertise_addr="digitalocean", coordinator_url="https://10.10.0.2:8443",
        coordinator_fingerprint=FP, join_secret="Zx8kP2qLm9Vt4Rw7Yb1Nc6Hd3Fg5Js0A",
        lb_reload_service="minitwit_loadbalancer", cloud_provider="digitalocean",
    ),
    "scaleway_worker": dict(
        cluster="staging-eu", backend="coordinator", role="worker", target_managers=5,
        advertise_addr="scaleway", coordinator_url="https://172.16.64.10:8443",
        coordinator_fingerprint=FP, join_secret='we"ird\\secret<&>$HOME`x`${y}',
        agent_url=AGENT_URL, agent_sha256=AGENT_SHA, docker_version="24.0.7-0ubuntu4",
        lb_enabled=False, cloud_provider="scaleway",
    ),
    "aws_manager": dict(
        cluster="prod", backend="secrets-manager", role="manager", target_managers=3,
        advertise_addr="aws", sm_secret_name="swarmstrap/prod-3fa9c2d1", sm_region="eu-west-1",
        agent_version="0.3.0-rc.1", release_base_url=MIRROR, release_public_key=OTHER_KEY,
        cloud_provider="aws",
    ),
    "aws_worker_kms": dict(
        cluster="prod", backend="secrets-manager", role="worker", target_managers=7,
        advertise_addr="aws", sm_secret_name="swarmstrap/prod-3fa9c2d1", sm_region="us-east-1",
        sm_kms_key_id="arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
        sm_endpoint_url="https://secretsmanager.us-east-1.amazonaws.com", cloud_provider="aws",
    ),
    "lab": dict(
        cluster="lab", backend="coordinator", role="auto", target_managers=1,
        advertise_addr="198.18.0.11", coordinator_url="https://198.18.0.2:8443",
        coordinator_fingerprint=FP, join_secret="lab-secret-0123456789",
    ),
}

COMMON_KEYS = {
    "cluster", "backend", "role", "target_managers", "advertise_addr", "docker_host",
    "state_dir", "lease_ttl_secs", "lb", "release", "cloud",
}


def assert_fully_rendered(test, name, template, variables):
    """No template syntax is left over. The embedded files (units, install script) are shell
    and legitimately contain ${...} (values may too), so check a render where every value
    holding template-like text is a placeholder."""
    probe = {
        k: f"<{k}>" if isinstance(v, str) and ("${" in v or "%{" in v) else v
        for k, v in variables.items()
    }
    text = tfrender.render_file(template, probe)
    for marker in ("${", "%{"):
        test.assertNotIn(marker, text, f"{name}: unrendered {marker} left")


def cloud_init_schema(text: str) -> subprocess.CompletedProcess:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(text)
        path = f.name
    try:
        return subprocess.run(
            ["cloud-init", "schema", "--config-file", path], capture_output=True, text=True
        )
    finally:
        os.unlink(path)


class NodeTemplateTest(unittest.TestCase):
    def render(self, name):
        return nodecfg.render_node(nodecfg.node_vars(**NODE_SCENARIOS[name]))

    def test_every_scenario_is_valid_cloud_config(self):
        for name in NODE_SCENARIOS:
            with self.subTest(name):
                text = self.render(name)
                self.assertTrue(text.startswith("#cloud-config\n"))
                assert_fully_rendered(self, name, nodecfg.NODE_TEMPLATE, nodecfg.node_vars(**NODE_SCENARIOS[name]))
                proc = cloud_init_schema(text)
                self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
                self.assertIn("Valid cloud-config", proc.stdout)

    def test_schema_check_is_real(self):
        # The validator must reject a broken document, or the test above proves nothing.
        bad = self.render("lab").replace("runcmd:", "runcmd: 42\nbogus_list:", 1)
        proc = cloud_init_schema(bad)
        self.assertNotEqual(proc.returncode, 0, proc.stdout)

    def test_config_toml_has_exactly_the_agent_keys(self):
        for name, sc in NODE_SCENARIOS.items():
            with self.subTest(name):
                files = nodecfg.write_files(self.render(name))
                entry = files[nodecfg.CONFIG_PATH]
                self.assertEqual(entry["permissions"], "0600")
                self.assertEqual(entry["owner"], "root:root")
                cfg = tomllib.loads(entry["content"])
                if sc["backend"] == "coordinator":
                    self.assertEqual(set(cfg), COMMON_KEYS | {"join_secret_file", "coordinator"})
                    self.assertEqual(cfg["join_secret_file"], nodecfg.JOIN_SECRET_PATH)
                    self.assertEqual(
                        cfg["coordinator"],
                        {"url": sc["coordinator_url"], "tls_fingerprint": FP},
                    )
                else:
                    self.assertEqual(set(cfg), COMMON_KEYS | {"secrets_manager"})
                    want = {"secret_name": sc["sm_secret_name"], "region": sc["sm_region"]}
                    if sc.get("sm_kms_key_id"):
                        want["kms_key_id"] = sc["sm_kms_key_id"]
                    if sc.get("sm_endpoint_url"):
                        want["endpoint_url"] = sc["sm_endpoint_url"]
                    self.assertEqual(cfg["secrets_manager"], want)
                self.assertEqual(cfg["cluster"], sc["cluster"])
                self.assertEqual(cfg["backend"], sc["backend"])
                self.assertEqual(cfg["role"], sc["role"])
                self.assertEqual(cfg["target_managers"], sc["target_managers"])
                self.assertEqual(cfg["advertise_addr"], sc["advertise_addr"])
                self.assertEqual(cfg["docker_host"], "unix:///var/run/docker.sock")
                self.assertEqual(cfg["state_dir"], "/var/lib/swarm-agent")
                self.assertEqual(cfg["lease_ttl_secs"], 30)
                # The nginx containers labelled swarmstrap.lb=nginx (the example stack's) are
                # reloaded; reload_service only when the module's lb_reload_service is set.
                want_lb = {"enabled": sc.get("lb_enabled", True), "path": "/loadbalancer/default.conf",
                           "reload_label": "swarmstrap.lb=nginx"}
                if sc.get("lb_reload_service"):
                    want_lb["reload_service"] = sc["lb_reload_service"]
                self.assertEqual(cfg["lb"], want_lb)
                # What `swarm-agent upgrade` (and the installer's upgrade verb) read: the same
                # mirror and key the node was installed from, also with an explicit binary.
                self.assertEqual(
                    cfg["release"],
                    {"base_url": sc.get("release_base_url", nodecfg.DEFAULT_BASE_URL),
                     "public_key": sc.get("release_public_key", nodecfg.DEFAULT_PUBLIC_KEY)},
                )
                # Whose metadata service the agent reads the tags from: set, never inferred
                # (Scaleway's advertise_addr is an IP, which names no cloud); the lab reads none.
                self.assertEqual(cfg["cloud"], {"provider": sc.get("cloud_provider", "none")})

    def test_join_secret_file_is_private_and_exact(self):
        for name, sc in NODE_SCENARIOS.items():
            with self.subTest(name):
                files = nodecfg.write_files(self.render(name))
                if sc["backend"] != "coordinator":
                    self.assertNotIn(nodecfg.JOIN_SECRET_PATH, files)
                    continue
                entry = files[nodecfg.JOIN_SECRET_PATH]
                self.assertEqual(entry["permissions"], "0600")
                self.assertEqual(entry["content"], sc["join_secret"])

    def test_units_script_and_daemon_json(self):
        for name, sc in NODE_SCENARIOS.items():
            with self.subTest(name):
                files = nodecfg.write_files(self.render(name))
                unit = files["/etc/systemd/system/swarm-agent.service"]
                self.assertEqual(unit["content"], nodecfg.read("swarm-agent.service"))
                self.assertEqual(unit["permissions"], "0644")
                script = files["/usr/local/lib/swarmstrap/swarmstrap-install.sh"]
                self.assertEqual(script["content"], nodecfg.read("swarmstrap-install.sh"))
                self.assertEqual(script["permissions"], "0755")
                block = files["/usr/local/lib/swarmstrap/swarmstrap-metadata-block.sh"]
                self.assertEqual(block["content"], nodecfg.read("swarmstrap-metadata-block.sh"))
                self.assertEqual(block["permissions"], "0755")
                bunit = files["/etc/systemd/system/swarmstrap-metadata-block.service"]
                self.assertEqual(bunit["content"], nodecfg.read("swarmstrap-metadata-block.service"))
                daemon = json.loads(files["/etc/docker/daemon.json"]["content"])
                self.assertEqual(daemon["log-driver"], "json-file")
                self.assertEqual(daemon["log-opts"], {"max-size": "10m", "max-file": "3"})
                # live-restore is incompatible with swarm mode: never set it.
                self.assertNotIn("live-restore", daemon)

    def test_runcmd_installs_checks_and_starts_the_agent(self):
        for name, sc in NODE_SCENARIOS.items():
            with self.subTest(name):
                doc = yaml.safe_load(self.render(name))
                # set -e first: a failed install or check starts nothing. The agent's unit is
                # Type=notify (active once the node is in the swarm): started without waiting.
                self.assertEqual(len(doc["runcmd"]), 4)
                self.assertEqual(doc["runcmd"][0], "set -e")
                self.assertEqual(doc["runcmd"][2], ["systemctl", "enable", "swarm-agent.service"])
                self.assertEqual(doc["runcmd"][3], ["systemctl", "--no-block", "start", "swarm-agent.service"])
                cmd = doc["runcmd"][1]
                self.assertEqual(cmd[:3], ["sh", "/usr/local/lib/swarmstrap/swarmstrap-install.sh", "install"])
                opts = dict(zip(cmd[3::2], cmd[4::2]))
                self.assertEqual(opts["--name"], "swarm-agent")
                if sc.get("agent_url"):
                    # The explicit binary: its sha256, and no release options.
                    self.assertEqual(opts["--url"], sc["agent_url"])
                    self.assertEqual(opts["--sha256"], sc["agent_sha256"])
                    self.assertFalse({"--version", "--base-url", "--public-key"} & set(opts))
                else:
                    # The signed release: only a version, a base URL and a key.
                    self.assertEqual(opts["--version"], sc.get("agent_version", nodecfg.DEFAULT_VERSION))
                    self.assertEqual(opts["--base-url"], sc.get("release_base_url", nodecfg.DEFAULT_BASE_URL))
                    self.assertEqual(opts["--public-key"], sc.get("release_public_key", nodecfg.DEFAULT_PUBLIC_KEY))
                    self.assertFalse({"--url", "--sha256"} & set(opts))
                self.assertEqual(opts["--docker"], sc.get("docker_version", "distro"))
                starts = [v for k, v in zip(cmd[3::2], cmd[4::2]) if k == "--start"]
                # The installer starts only the metadata block (no container may run before
                # it); swarm-agent.service never blocks cloud-init.
                self.assertEqual(starts, ["swarmstrap-metadata-block.service"])

    def test_user_data_fits_the_clouds_limits(self):
        # AWS takes 16 KB of user-data: the module sends it gzipped (base64gzip), as cloud-init
        # reads it. DigitalOcean takes 64 KiB uncompressed. Worst case: the longest values the
        # module validations allow.
        worst = dict(NODE_SCENARIOS["aws_worker_kms"])
        worst.update(
            cluster="c" * 32,
            sm_secret_name="swarmstrap/" + "c" * 32 + "-0123456789abcdef",
            agent_url="https://" + "u" * 1016, agent_sha256="f" * 64,
            release_base_url="https://" + "b" * 504,
        )
        for name, variables in list(NODE_SCENARIOS.items()) + [("worst", worst)]:
            with self.subTest(name):
                text = nodecfg.render_node(nodecfg.node_vars(**variables)).encode()
                self.assertLess(len(gzip.compress(text)), nodecfg.AWS_USER_DATA_LIMIT, name)
                self.assertLess(len(text), 64 * 1024, name)
                self.assertEqual(yaml.safe_load(gzip.decompress(gzip.compress(text))), yaml.safe_load(text))

    def test_aws_sends_the_user_data_gzipped(self):
        with open(os.path.join(nodecfg.REPO, "terraform", "modules", "aws", "main.tf")) as f:
            text = f.read()
        # Managers and workers: their user-data (with or without cloud_config_extra); the
        # coordinator (backend "coordinator"): its template.
        self.assertEqual(re.findall(r'user_data_base64\s*=\s*base64gzip\(local\.node_user_data\["(\w+)"\]\)', text),
                         ["manager", "worker"])
        self.assertEqual(len(re.findall(r'user_data_base64\s*=\s*base64gzip\(templatefile\("\$\{local\.cloud_init_dir\}/coordinator\.yaml\.tftpl"', text)), 1)
        self.assertNotRegex(text, r"\n\s*user_data\s*=")

    def test_template_uses_exactly_the_passed_variables(self):
        with open(nodecfg.NODE_TEMPLATE) as f:
            used = tfrender.template_variables(f.read())
        passed = set(nodecfg.node_vars(**NODE_SCENARIOS["lab"]))
        self.assertEqual(used, passed)

    def test_unknown_cloud_provider_is_refused(self):
        for bad in ("azure", "AWS", ""):
            with self.subTest(bad=bad), self.assertRaisesRegex(ValueError, "cloud provider"):
                nodecfg.node_vars(**{**NODE_SCENARIOS["lab"], "cloud_provider": bad})

    def test_missing_variable_is_an_error(self):
        variables = nodecfg.node_vars(**NODE_SCENARIOS["lab"])
        del variables["sm_kms_key_id"]  # referenced only in a branch not taken here
        with self.assertRaisesRegex(tfrender.TemplateError, "sm_kms_key_id"):
            nodecfg.render_node(variables)


# An operator's cloud_config_extra: packages, files and commands of their own.
EXTRA = """#cloud-config
packages: [htop, jq]
write_files:
  - path: /etc/motd
    content: |
      a swarmstrap node
runcmd:
  - [sh, -c, "echo extra >> /var/log/extra.log"]
  - echo done
"""

SYSTEM_PYTHON = "/usr/bin/python3"  # the interpreter whose site-packages hold cloud-init's own code
MERGE_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cloudinit_merge.py")


def cloud_init_python_works() -> bool:
    try:
        return subprocess.run([SYSTEM_PYTHON, "-c", "import cloudinit.user_data"], capture_output=True).returncode == 0
    except OSError:
        return False


def cloud_init_merge(user_data: bytes) -> dict:
    """cloud-init's own UserDataProcessor and CloudConfigPartHandler on the user-data, as on a
    VM: {"parts": [...], "merged": the combined cloud-config}."""
    with tempfile.NamedTemporaryFile("wb", suffix=".user-data", delete=False) as f:
        f.write(user_data)
        path = f.name
    try:
        proc = subprocess.run([SYSTEM_PYTHON, MERGE_SCRIPT, path], capture_output=True, text=True)
    finally:
        os.unlink(path)
    if proc.returncode != 0:
        raise AssertionError(f"cloudinit_merge.py failed: {proc.stderr}")
    return json.loads(proc.stdout)


def terraform_gzip_sizes(cases: dict) -> dict:
    """name -> (cloud-config, extra): the byte size of base64gzip(user-data) as Terraform makes it
    (what the AWS module sends), the user-data rendered by Terraform's templatefile()."""
    files, outputs = {}, {}
    for name, (cc, extra) in cases.items():
        files[f"{name}.json"] = json.dumps({"swarmstrap": cc, "extra": extra})
        ud = (f'templatefile({json.dumps(nodecfg.MULTIPART_TEMPLATE)}, jsondecode(file("${{path.module}}/{name}.json")))'
              if extra else f'jsondecode(file("${{path.module}}/{name}.json")).swarmstrap')
        outputs[name] = f"base64gzip({ud})"
    got = tfbin.evaluate(outputs, files)
    return {name: base64.b64decode(v) for name, v in got.items()}


class CloudConfigExtraTest(unittest.TestCase):
    """cloud_config_extra: the modules send a MIME multipart whose second part (the operator's)
    carries Merge-Type list(append)+dict(no_replace,recurse_list)+str(). Played through
    cloud-init's own user-data processor and merger: both parts are valid cloud-config, and the
    operator's packages, write_files and runcmd are added to ours, which stay intact."""

    def user_data(self, name, extra=EXTRA):
        return nodecfg.render_user_data(nodecfg.render_node(nodecfg.node_vars(**NODE_SCENARIOS[name])), extra)

    def test_without_extra_the_user_data_is_the_cloud_config_alone(self):
        cc = nodecfg.render_node(nodecfg.node_vars(**NODE_SCENARIOS["lab"]))
        self.assertEqual(nodecfg.render_user_data(cc, ""), cc)

    @unittest.skipUnless(cloud_init_python_works(), "cloud-init's Python package is not importable by /usr/bin/python3")
    def test_cloud_init_merges_the_extra_into_ours(self):
        extra = yaml.safe_load(EXTRA)
        for name in NODE_SCENARIOS:
            with self.subTest(name):
                ours = yaml.safe_load(nodecfg.render_node(nodecfg.node_vars(**NODE_SCENARIOS[name])))
                got = cloud_init_merge(self.user_data(name).encode())
                self.assertEqual([(p["filename"], p["content_type"]) for p in got["parts"]],
                                 [("swarmstrap.yaml", "text/cloud-config"), ("cloud-config-extra.yaml", "text/cloud-config")])
                self.assertEqual(got["parts"][1]["merge_type"], "list(append)+dict(no_replace,recurse_list)+str()")
                # Each part, and the combined result, is valid cloud-config.
                for text in [p["payload"] for p in got["parts"]] + ["#cloud-config\n" + yaml.safe_dump(got["merged"])]:
                    proc = cloud_init_schema(text)
                    self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
                merged = got["merged"]
                self.assertEqual(merged["runcmd"], ours["runcmd"] + extra["runcmd"])
                self.assertEqual(merged["write_files"], ours["write_files"] + extra["write_files"])
                self.assertEqual(merged["packages"], extra["packages"])
                self.assertEqual(set(merged), set(ours) | set(extra))

    @unittest.skipUnless(cloud_init_python_works(), "cloud-init's Python package is not importable by /usr/bin/python3")
    def test_without_the_merge_type_the_extra_would_replace_ours(self):
        # The control: cloud-init's default merge replaces lists, so the header is what keeps
        # our runcmd (the agent's install and start) when the operator has a runcmd too.
        ud = self.user_data("lab").replace("Merge-Type: list(append)+dict(no_replace,recurse_list)+str()\n", "")
        merged = cloud_init_merge(ud.encode())["merged"]
        self.assertEqual(merged["runcmd"], yaml.safe_load(EXTRA)["runcmd"])

    def test_gzipped_user_data_is_what_cloud_init_reads(self):
        if not cloud_init_python_works():
            self.skipTest("cloud-init's Python package is not importable by /usr/bin/python3")
        ud = self.user_data("aws_manager").encode()
        self.assertEqual(cloud_init_merge(gzip.compress(ud))["merged"], cloud_init_merge(ud)["merged"])

    def test_aws_user_data_budget(self):
        # AWS takes 16384 bytes of user-data; the module sends base64gzip() of it. Measured with
        # Terraform's own gzip: every AWS scenario, the longest values the validations allow,
        # with and without the extra, and the room left for the operator's part.
        worst = dict(NODE_SCENARIOS["aws_worker_kms"])
        worst.update(cluster="c" * 32, sm_secret_name="swarmstrap/" + "c" * 32 + "-0123456789abcdef",
                     agent_url="https://" + "u" * 1016, agent_sha256="f" * 64,
                     release_base_url="https://" + "b" * 504, lb_reload_service="s" * 63)
        cases = {}
        for name, variables in (("aws_manager", NODE_SCENARIOS["aws_manager"]),
                                ("aws_worker_kms", NODE_SCENARIOS["aws_worker_kms"]), ("worst", worst)):
            cc = nodecfg.render_node(nodecfg.node_vars(**variables))
            cases[name] = (cc, "")
            cases[name + "_extra"] = (cc, EXTRA)
        sizes = terraform_gzip_sizes(cases)
        for name, blob in sizes.items():
            with self.subTest(name):
                self.assertLess(len(blob), nodecfg.AWS_USER_DATA_LIMIT)
                # What the instance gets back is the user-data, byte for byte.
                cc, extra = cases[name]
                self.assertEqual(gzip.decompress(blob).decode(), nodecfg.render_user_data(cc, extra))
        # Room for the operator: at least 4 KiB of gzipped extra on top of the worst case.
        self.assertGreater(nodecfg.AWS_USER_DATA_LIMIT - len(sizes["worst_extra"]), 4096)

    def test_the_modules_refuse_user_data_over_the_limit(self):
        # The AWS precondition compares length(base64gzip(user-data)) with 21844, the base64
        # length of 16383 bytes: a real Terraform on a normal and an incompressible extra.
        import random
        self.assertEqual(4 * -(-16383 // 3), 21844)
        with open(os.path.join(nodecfg.REPO, "terraform", "modules", "aws", "main.tf")) as f:
            self.assertRegex(f.read(), r"\n\s*user_data_b64_limit\s*=\s*21844\n")
        rnd = random.Random(17)
        noise = "".join(rnd.choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") for _ in range(8000))
        big = EXTRA + "bootcmd:\n  - echo " + noise + "\n"
        cc = nodecfg.render_node(nodecfg.node_vars(**NODE_SCENARIOS["aws_manager"]))
        files = {"small.json": json.dumps({"swarmstrap": cc, "extra": EXTRA}),
                 "big.json": json.dumps({"swarmstrap": cc, "extra": big})}
        outputs = {n: f'length(base64gzip(templatefile({json.dumps(nodecfg.MULTIPART_TEMPLATE)}, jsondecode(file("${{path.module}}/{n}.json"))))) <= 21844'
                   for n in ("small", "big")}
        self.assertEqual(tfbin.evaluate(outputs, files), {"small": True, "big": False})

    def test_extra_validation(self):
        with self.assertRaisesRegex(ValueError, "#cloud-config"):
            nodecfg.check_cloud_config_extra("runcmd: [ls]\n")
        with self.assertRaisesRegex(ValueError, "MIME boundary"):
            nodecfg.check_cloud_config_extra("#cloud-config\nruncmd: [echo --swarmstrap-cloud-config-part]\n")
        nodecfg.check_cloud_config_extra(EXTRA)

    def test_module_variable_refuses_what_would_break_the_multipart(self):
        # Each module's own cloud_config_extra variable block, through a real Terraform.
        cases = [("", True), (EXTRA, True), ("#cloud-config\r\nruncmd: [ls]\n", True),
                 ("runcmd: [ls]\n", False), ("#!/bin/sh\necho hi\n", False),
                 ("#cloud-config\nruncmd: [echo swarmstrap-cloud-config-part]\n", False)]
        for cloud in ("aws", "digitalocean", "scaleway"):
            with open(os.path.join(nodecfg.REPO, "terraform", "modules", cloud, "variables.tf")) as f:
                text = f.read()
            m = re.search(r'(?ms)^variable "cloud_config_extra" \{.*?^\}', text)
            self.assertIsNotNone(m, cloud)
            with tempfile.TemporaryDirectory(prefix="swarmstrap-tf-") as d:
                with open(os.path.join(d, "main.tf"), "w") as f:
                    f.write(m.group(0) + '\n\noutput "extra" {\n  value = var.cloud_config_extra\n}\n')
                tfbin.run(["init", "-input=false", "-no-color"], d)
                for value, ok in cases:
                    with self.subTest(cloud=cloud, value=value[:30]):
                        with open(os.path.join(d, "v.tfvars.json"), "w") as f:
                            json.dump({"cloud_config_extra": value}, f)
                        proc = tfbin.run(["apply", "-auto-approve", "-input=false", "-no-color", "-var-file=v.tfvars.json"], d, check=False)
                        self.assertEqual(proc.returncode == 0, ok, proc.stderr)
                        if not ok:
                            self.assertIn("The cloud_config_extra must be", proc.stderr.replace("\n", " "))

    def test_modules_send_the_multipart_only_with_an_extra(self):
        tmpl = 'templatefile("${local.cloud_init_dir}/multipart.tftpl", { swarmstrap = cc, extra = var.cloud_config_extra })'
        for cloud in ("aws", "digitalocean", "scaleway"):
            with self.subTest(cloud):
                with open(os.path.join(nodecfg.REPO, "terraform", "modules", cloud, "main.tf")) as f:
                    text = f.read()
                uses = re.findall(r'var\.cloud_config_extra == "" \? cc : (templatefile\([^\n]*\}\))', text)
                self.assertEqual(uses, [tmpl] * (2 if cloud == "scaleway" else 1))


class CoordinatorTemplateTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.cert, cls.key = make_cert(cls.tmp.name)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    CREATE = ["/usr/local/bin/swarm-coordinator", "cluster", "create", "prod", "--target-managers",
              "5", "--secret-file", "/etc/swarm-coordinator/cluster.secret",
              "--operator-credential-out", "/root/swarmstrap-operator-credential",
              "--data-dir", "/var/lib/swarm-coordinator"]

    def variables(self, **kw):
        return nodecfg.coordinator_vars(
            cluster="prod", target_managers=5, cluster_secret="Zx8kP2qLm9Vt4Rw7",
            tls_cert_pem=self.cert, tls_key_pem=self.key, **kw,
        )

    def test_fits_the_aws_user_data_limit_gzipped(self):
        # The AWS module (backend "coordinator") sends base64gzip() of it: Terraform's gzip.
        text = nodecfg.render_coordinator(self.variables(
            coordinator_binary_url="https://" + "u" * 1016, coordinator_binary_sha256="f" * 64))
        blob = terraform_gzip_sizes({"coordinator": (text, "")})["coordinator"]
        self.assertLess(len(blob), nodecfg.AWS_USER_DATA_LIMIT)
        self.assertEqual(gzip.decompress(blob).decode(), text)

    def test_valid_and_complete(self):
        text = nodecfg.render_coordinator(self.variables())
        assert_fully_rendered(self, "coordinator", nodecfg.COORDINATOR_TEMPLATE, self.variables())
        proc = cloud_init_schema(text)
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        files = nodecfg.write_files(text)
        self.assertEqual(files["/etc/swarm-coordinator/tls.crt"]["content"], self.cert)
        self.assertEqual(files["/etc/swarm-coordinator/tls.key"]["content"], self.key)
        self.assertEqual(files["/etc/swarm-coordinator/tls.key"]["permissions"], "0600")
        secret = files["/etc/swarm-coordinator/cluster.secret"]
        self.assertEqual((secret["content"], secret["permissions"]), ("Zx8kP2qLm9Vt4Rw7", "0600"))
        unit = files["/etc/systemd/system/swarm-coordinator.service"]["content"]
        self.assertEqual(unit, nodecfg.read("swarm-coordinator.service"))
        # The service runs as its own (dynamic) user: it reads systemd's private copy of the key.
        self.assertIn("--tls-cert /etc/swarm-coordinator/tls.crt --tls-key %d/tls.key", unit)
        self.assertIn("LoadCredential=tls.key:/etc/swarm-coordinator/tls.key", unit)
        runcmd = yaml.safe_load(text)["runcmd"]
        self.assertEqual(runcmd[0], "set -e")
        self.assertEqual(runcmd[1][2:5], ["install", "--name", "swarm-coordinator"])
        self.assertEqual(runcmd[1][-2:], ["--docker", "none"])
        # The modules' default (coordinator_adopt_running_swarm = false): a plain create.
        self.assertEqual(runcmd[2], self.CREATE)
        # The join secret file goes once the cluster holds it (item 11 of issue 14).
        self.assertEqual(runcmd[3], ["rm", "-f", "/etc/swarm-coordinator/cluster.secret"])
        self.assertEqual(runcmd[4], ["systemctl", "enable", "--now", "swarm-coordinator.service"])
        self.assertIn("--data-dir /var/lib/swarm-coordinator", unit)
        # The secret never reaches a command line.
        self.assertNotIn("Zx8kP2qLm9Vt4Rw7", json.dumps(runcmd))

    def test_adopt_running_swarm_adds_adopt_to_cluster_create_only(self):
        # true: the replacement coordinator of a running swarm creates the cluster awaiting
        # adoption (`cluster create ... --adopt`); false (a new cluster): no --adopt anywhere.
        rendered = {}
        for adopt in (False, True):
            with self.subTest(adopt=adopt):
                variables = self.variables(adopt_running_swarm=adopt)
                text = nodecfg.render_coordinator(variables)
                assert_fully_rendered(self, f"coordinator adopt={adopt}", nodecfg.COORDINATOR_TEMPLATE, variables)
                proc = cloud_init_schema(text)
                self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
                self.assertIn("Valid cloud-config", proc.stdout)
                doc = yaml.safe_load(text)
                runcmd = doc["runcmd"]
                self.assertEqual(len(runcmd), 5)
                self.assertEqual(runcmd[2], self.CREATE + (["--adopt"] if adopt else []))
                flags = [arg for item in runcmd if isinstance(item, list) for arg in item]
                self.assertEqual(flags.count("--adopt"), 1 if adopt else 0)
                self.assertEqual(runcmd[4], ["systemctl", "enable", "--now", "swarm-coordinator.service"])
                rendered[adopt] = doc
        # Nothing but the create command differs: same files, same install and start steps.
        off, on = rendered[False], rendered[True]
        self.assertEqual(off["write_files"], on["write_files"])
        self.assertEqual([c for i, c in enumerate(off["runcmd"]) if i != 2],
                         [c for i, c in enumerate(on["runcmd"]) if i != 2])

    def test_installs_the_signed_release_or_the_explicit_binary(self):
        runcmd = yaml.safe_load(nodecfg.render_coordinator(self.variables()))["runcmd"]
        self.assertEqual(runcmd[1], [
            "sh", "/usr/local/lib/swarmstrap/swarmstrap-install.sh", "install", "--name", "swarm-coordinator",
            "--version", nodecfg.DEFAULT_VERSION, "--base-url", nodecfg.DEFAULT_BASE_URL,
            "--public-key", nodecfg.DEFAULT_PUBLIC_KEY, "--docker", "none"])
        variables = self.variables(coordinator_binary_url="https://mirror.internal/swarm-coordinator",
                                   coordinator_binary_sha256="ab" * 32)
        text = nodecfg.render_coordinator(variables)
        self.assertEqual(cloud_init_schema(text).returncode, 0)
        self.assertEqual(yaml.safe_load(text)["runcmd"][1][3:], [
            "--name", "swarm-coordinator", "--url", "https://mirror.internal/swarm-coordinator",
            "--sha256", "ab" * 32, "--docker", "none"])
        with self.assertRaises(ValueError):  # both or neither
            self.variables(coordinator_binary_url="https://mirror.internal/swarm-coordinator")

    def test_adopt_running_swarm_must_be_a_bool(self):
        # The modules declare it `type = bool`; the tests' vars builder refuses anything else,
        # and so does the template's `%{ if }` for a value no bool conversion accepts.
        for bad in ("true", 1, None):
            with self.subTest(bad=bad), self.assertRaises(ValueError):
                self.variables(adopt_running_swarm=bad)
        variables = self.variables()
        variables["adopt_running_swarm"] = "yes"
        with self.assertRaises(tfrender.TemplateError):
            nodecfg.render_coordinator(variables)

    def test_template_uses_exactly_the_passed_variables(self):
        with open(nodecfg.COORDINATOR_TEMPLATE) as f:
            used = tfrender.template_variables(f.read())
        self.assertEqual(used, set(self.variables()))
        self.assertIn("adopt_running_swarm", used)


class RendererMatchesTerraformTest(unittest.TestCase):
    """The Python renderer must produce byte-for-byte what Terraform's templatefile() does."""

    def test_templates_render_identically(self):
        with tempfile.TemporaryDirectory() as tmp:
            cert, key = make_cert(tmp)
            cases = {
                name: (nodecfg.NODE_TEMPLATE, nodecfg.node_vars(**sc))
                for name, sc in NODE_SCENARIOS.items()
            }
            cases["coordinator"] = (
                nodecfg.COORDINATOR_TEMPLATE,
                nodecfg.coordinator_vars(cluster="prod", cluster_secret='a"b<c>', tls_cert_pem=cert, tls_key_pem=key),
            )
            cases["coordinator_adopt"] = (
                nodecfg.COORDINATOR_TEMPLATE,
                nodecfg.coordinator_vars(cluster="prod", cluster_secret='a"b<c>', tls_cert_pem=cert, tls_key_pem=key,
                                         adopt_running_swarm=True),
            )
            cases["multipart"] = (nodecfg.MULTIPART_TEMPLATE, {"swarmstrap": "#cloud-config\nruncmd: [ls]\n\n\n", "extra": EXTRA})
            got = tfbin.templatefile_many(cases)
            for name, (path, variables) in cases.items():
                with self.subTest(name):
                    self.assertEqual(tfrender.render_file(path, variables), got[name])

    def test_strip_markers_and_directives_match(self):
        snippets = {
            "a": 'X%{ if c ~}  \n\n   y%{ endif }',
            "b": '%{ for x in xs ~}\n  - ${x}\n%{ endfor ~}\nend',
            "c": 'a\n%{ if !c ~}\nno\n%{ else ~}\nyes\n%{ endif ~}\nz',
            "d": 'n=${n} b=${c} j=${jsonencode(s)} i=${indent(2, s)}$${lit} %%{lit}',
            "e": '%{ for k, v in m ~}\n${k}=${v}\n%{ endfor ~}',
            "f": '%{ if c && n == 3 || !c ~}\nok\n%{ endif ~}',
        }
        variables = {"c": True, "xs": ["1", "2"], "n": 3, "s": 'q"<&>\n\tz', "m": {"b": "2", "a": "1"}}
        with tempfile.TemporaryDirectory() as tmp:
            cases = {}
            for name, text in snippets.items():
                path = os.path.join(tmp, f"{name}.tftpl")
                with open(path, "w") as f:
                    f.write(text)
                cases[name] = (path, variables)
            got = tfbin.templatefile_many(cases)
            for name, (path, _) in cases.items():
                with self.subTest(name):
                    self.assertEqual(tfrender.render_file(path, variables), got[name])


class RenderNodeCliTest(unittest.TestCase):
    SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "render_node.py")

    def run_cli(self, *args):
        return subprocess.run([sys.executable, self.SCRIPT, *args], capture_output=True, text=True)

    def test_writes_the_exact_files(self):
        with tempfile.TemporaryDirectory() as tmp:
            secret_file = os.path.join(tmp, "secret")
            with open(secret_file, "w") as f:
                f.write("lab-secret-0123456789\n")
            out_dir = os.path.join(tmp, "out")
            proc = self.run_cli(
                "--out-dir", out_dir, "--cluster", "lab", "--coordinator-url", "https://198.18.0.2:8443",
                "--fingerprint", FP, "--join-secret-file", secret_file, "--advertise", "198.18.0.11",
                "--target-managers", "1",
            )
            self.assertEqual(proc.returncode, 0, proc.stderr)
            paths = json.loads(proc.stdout)
            expected = nodecfg.render_node(nodecfg.node_vars(**{**NODE_SCENARIOS["lab"], "join_secret": "lab-secret-0123456789"}))
            with open(paths["user_data"]) as f:
                self.assertEqual(f.read(), expected)
            with open(paths["config"]) as f:
                cfg_text = f.read()
            self.assertEqual(cfg_text, nodecfg.write_files(expected)[nodecfg.CONFIG_PATH]["content"])
            cfg = tomllib.loads(cfg_text)
            self.assertEqual(cfg["coordinator"]["tls_fingerprint"], FP)
            self.assertEqual(cfg["advertise_addr"], "198.18.0.11")
            self.assertEqual(cfg["cloud"], {"provider": "none"})  # a lab reads no cloud metadata
            with open(paths["join_secret"]) as f:
                self.assertEqual(f.read(), "lab-secret-0123456789")
            for key in ("user_data", "config", "join_secret"):
                self.assertEqual(os.stat(paths[key]).st_mode & 0o777, 0o600, key)

    def test_cloud_provider_option(self):
        with tempfile.TemporaryDirectory() as tmp:
            common = ["--cluster", "prod", "--backend", "secrets-manager", "--secret-name", "swarmstrap/prod",
                      "--region", "eu-west-1", "--advertise", "aws"]
            proc = self.run_cli("--out-dir", tmp, *common, "--cloud-provider", "aws")
            self.assertEqual(proc.returncode, 0, proc.stderr)
            with open(json.loads(proc.stdout)["config"]) as f:
                self.assertEqual(tomllib.loads(f.read())["cloud"], {"provider": "aws"})
            proc = self.run_cli("--out-dir", os.path.join(tmp, "bad"), *common, "--cloud-provider", "azure")
            self.assertEqual(proc.returncode, 2)
            self.assertIn("--cloud-provider", proc.stderr)

    def test_bad_input_is_a_clear_error(self):
        with tempfile.TemporaryDirectory() as tmp:
            proc = self.run_cli("--out-dir", tmp, "--cluster", "lab", "--coordinator-url",
                                "https://198.18.0.2:8443", "--fingerprint", "sha256:xyz",
                                "--join-secret-file", os.path.join(tmp, "none"))
            self.assertEqual(proc.returncode, 2)
            self.assertIn("--join-secret-file", proc.stderr)
            with open(os.path.join(tmp, "s"), "w") as f:
                f.write("x")
            proc = self.run_cli("--out-dir", tmp, "--cluster", "lab", "--coordinator-url",
                                "https://198.18.0.2:8443", "--fingerprint", "sha256:xyz",
                                "--join-secret-file", os.path.join(tmp, "s"))
            self.assertEqual(proc.returncode, 2)
            self.assertIn("fingerprint", proc.stderr)
            self.assertFalse(os.path.exists(os.path.join(tmp, "config.toml")))


if __name__ == "__main__":
    unittest.main()
