"""The modules' backend "etcd" (an etcd cluster the operator runs): every module accepts it with
the members' endpoints and credentials, its variables refuse bad input with clear messages (the
module's own variable blocks, through a real Terraform), the inputs that go together are checked
by one list of messages the managers' precondition shows (the module's own expressions,
evaluated by a real Terraform), the module creates no coordinator and no Secrets Manager secret
or permission with it, every node template gets the etcd variables for every backend (the
workers their own etcd login when given; the user-data rendered by a real Terraform passes
`cloud-init schema` and fits AWS's limit), no output can reach a secret, and the READMEs'
etcdctl role steps, run against a real etcd, give managers both prefixes and workers the
shared one only."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import nodecfg  # noqa: E402
import test_terraform as tt  # noqa: E402  (the shared HCL helpers; its tests are not re-run here)
import tfbin  # noqa: E402
from shutil import which as shutil_which  # noqa: E402

MODULES = tt.MODULES
ETCD_VARS = ["etcd_endpoints", "etcd_prefix", "etcd_ca_pem", "etcd_client_cert_pem", "etcd_client_key_pem",
             "etcd_user", "etcd_password", "etcd_worker_user", "etcd_worker_password"]
SENSITIVE = ["etcd_client_key_pem", "etcd_password", "etcd_worker_password"]
ETCD_LOCALS = ["etcd", "etcd_prefix", "etcd_managers_prefix", "etcd_worker_own_login", "etcd_login",
               "etcd_input_errors"]
BACKENDS = {"aws": ["secrets-manager", "coordinator", "etcd"], "digitalocean": ["coordinator", "etcd"],
            "scaleway": ["coordinator", "etcd"]}
# The template variables every module passes for every backend ("" / [] when not etcd).
TEMPLATE_ETCD = {"etcd_endpoints": "var.etcd_endpoints", "etcd_prefix": "local.etcd_prefix",
                 "etcd_ca_pem": "var.etcd_ca_pem", "etcd_cert_pem": "var.etcd_client_cert_pem",
                 "etcd_key_pem": "var.etcd_client_key_pem"}
INSTANCE = {"aws": "aws_instance", "digitalocean": "digitalocean_droplet", "scaleway": "scaleway_instance_server"}
# Each module's coordinator resources: none of them with backend "etcd".
COORDINATOR_RESOURCES = {
    "aws": [("random_password", "cluster_secret"), ("tls_private_key", "coordinator"),
            ("tls_self_signed_cert", "coordinator"), ("local_file", "coordinator_cert_der"),
            ("aws_security_group", "coordinator"), ("aws_instance", "coordinator")],
    "digitalocean": [("digitalocean_tag", "coordinator"), ("random_password", "cluster_secret"),
                     ("tls_private_key", "coordinator"), ("tls_self_signed_cert", "coordinator"),
                     ("local_file", "coordinator_cert_der"), ("digitalocean_droplet", "coordinator"),
                     ("digitalocean_firewall", "coordinator")],
    "scaleway": [("scaleway_ipam_ip", "coordinator"), ("random_password", "cluster_secret"),
                 ("tls_private_key", "coordinator"), ("tls_self_signed_cert", "coordinator"),
                 ("local_file", "coordinator_cert_der"), ("scaleway_instance_security_group", "coordinator"),
                 ("scaleway_instance_ip", "coordinator"), ("scaleway_instance_server", "coordinator")],
}


def pems() -> dict:
    """A real CA certificate and key pair (openssl), for the PEM inputs."""
    with tempfile.TemporaryDirectory() as tmp:
        cert, _ = tt.make_cert(tmp)
        with open(os.path.join(tmp, "k.pem")) as f:
            key = f.read()
    return {"cert": cert, "key": key}


def local_expr(text: str, name: str) -> str:
    """A local's whole expression, also one that spans lines (`compact([` ... `])`)."""
    m = re.search(rf"(?m)^\s*{name}\s*=\s*", text)
    assert m, f"local {name} not found"
    i, depth = m.end(), 0
    while i < len(text) and not (text[i] == "\n" and depth == 0):
        c = text[i]
        if c == '"':
            i += 1
            while text[i] != '"':
                i += 2 if text[i] == "\\" else 1
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        i += 1
    return text[m.end() : i].strip()


class ModuleRoot:
    """A root module made of one module's own variable blocks (backend + etcd_*) and etcd
    locals (with cluster = "prod"), initialised once; apply() runs it with a var file and
    returns the outputs or the failed process."""

    def __init__(self, cloud: str, tmp: str):
        self.dir = tmp
        variables = tt.read_text(os.path.join(MODULES[cloud], "variables.tf"))
        text = tt.raw(MODULES[cloud])
        parts = [tt.variable_block(variables, n) for n in ["backend"] + ETCD_VARS]
        parts.append("locals {\n  cluster = \"prod\"\n" + "".join(
            f"  {n} = {local_expr(text, n)}\n" for n in ETCD_LOCALS) + "}\n")
        parts.append('output "errors" {\n  value = local.etcd_input_errors\n}\n')
        parts.append('output "prefixes" {\n  value = { shared = local.etcd_prefix, managers = local.etcd_managers_prefix }\n}\n')
        parts.append('output "login" {\n  value     = local.etcd_login\n  sensitive = true\n}\n')
        with open(os.path.join(tmp, "main.tf"), "w") as f:
            f.write("\n\n".join(parts))
        tfbin.run(["init", "-input=false", "-no-color"], tmp)

    def apply(self, values: dict):
        with open(os.path.join(self.dir, "v.tfvars.json"), "w") as f:
            json.dump(values, f)
        proc = tfbin.run(["apply", "-auto-approve", "-input=false", "-no-color", "-var-file=v.tfvars.json"],
                         self.dir, check=False)
        if proc.returncode != 0:
            return proc
        out = json.loads(tfbin.run(["output", "-json", "-no-color"], self.dir).stdout)
        return {k: v["value"] for k, v in out.items()}


class EtcdVariablesTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.pem = pems()
        cls.good = {"backend": "etcd", "etcd_endpoints": ["https://10.0.0.5:2379", "https://etcd-2.internal:2379"],
                    "etcd_ca_pem": cls.pem["cert"], "etcd_client_cert_pem": cls.pem["cert"],
                    "etcd_client_key_pem": cls.pem["key"], "etcd_user": "swarmstrap-prod-manager",
                    "etcd_password": "Zx8kP2qLm9Vt4Rw7", "etcd_worker_user": "swarmstrap-prod-worker",
                    "etcd_worker_password": "Wq3nB6yTc1Hs5Kd9"}

    def test_every_module_declares_the_inputs(self):
        for cloud, d in MODULES.items():
            declared = tt.declared_variables(d)
            for name in ETCD_VARS:
                with self.subTest(cloud=cloud, var=name):
                    body = declared[name]
                    self.assertIn("validation", body)
                    self.assertIn(tt.scalar(body["default"]), ("", [], "[]", "${[]}"))
                    self.assertIs(tt.scalar(body.get("sensitive", False)), name in SENSITIVE)
                    self.assertIn('backend \\"etcd\\"', tt.variable_block(
                        tt.read_text(os.path.join(d, "variables.tf")), name))

    def test_backend_accepts_etcd(self):
        for cloud in MODULES:
            block = tt.variable_block(tt.read_text(os.path.join(MODULES[cloud], "variables.tf")), "backend")
            with tempfile.TemporaryDirectory(prefix="swarmstrap-tf-") as d:
                with open(os.path.join(d, "main.tf"), "w") as f:
                    f.write(block + '\n\noutput "b" {\n  value = var.backend\n}\n')
                tfbin.run(["init", "-input=false", "-no-color"], d)
                for value in BACKENDS[cloud] + ["consul", "Etcd"]:
                    with self.subTest(cloud=cloud, backend=value):
                        proc = tfbin.run(["apply", "-auto-approve", "-input=false", "-no-color", f"-var=backend={value}"],
                                         d, check=False)
                        self.assertEqual(proc.returncode == 0, value in BACKENDS[cloud], proc.stderr)
                        if proc.returncode != 0:
                            self.assertIn("The backend must be", proc.stderr.replace("\n", " "))
                            self.assertIn('"etcd"', proc.stderr)

    def test_bad_values_are_refused_with_the_variables_message(self):
        bad = [
            ("etcd_endpoints", ["http://10.0.0.5:2379"]), ("etcd_endpoints", ["10.0.0.5:2379"]),
            ("etcd_endpoints", ["https://10.0.0.5:2379/v3"]), ("etcd_endpoints", ["https://10.0.0.5:2379,https://x"]),
            ("etcd_endpoints", [f"https://10.0.0.{i}:2379" for i in range(17)]),
            ("etcd_prefix", "swarmstrap/prod/"), ("etcd_prefix", "/swarmstrap/prod"), ("etcd_prefix", "/"),
            ("etcd_prefix", "//"), ("etcd_prefix", "/swarm strap/"), ("etcd_prefix", "/a//"),
            ("etcd_ca_pem", "not a certificate"), ("etcd_client_cert_pem", "MIIB..."),
            ("etcd_client_key_pem", "-----BEGIN ENCRYPTED PRIVATE KEY-----\nsecret-key-material\n"),
            ("etcd_client_key_pem", "secret-key-material"),
            ("etcd_user", "swarm strap"), ("etcd_user", "u" * 129), ("etcd_worker_user", "a\tb"),
            ("etcd_password", " hunter2-secret"), ("etcd_password", "hunter2-secret\n"), ("etcd_password", "p" * 257),
            ("etcd_worker_password", "hunter2-secret "),
        ]
        for cloud in MODULES:
            with tempfile.TemporaryDirectory(prefix="swarmstrap-tf-") as tmp:
                root = ModuleRoot(cloud, tmp)
                got = root.apply(self.good)
                self.assertIsInstance(got, dict, getattr(got, "stderr", ""))
                self.assertEqual(got["errors"], [])
                for name, value in bad:
                    with self.subTest(cloud=cloud, var=name, value=str(value)[:40]):
                        proc = root.apply(dict(self.good, **{name: value}))
                        self.assertIsInstance(proc, subprocess.CompletedProcess)
                        self.assertRegex(proc.stderr.replace("\n", " "), f"(The|Every entry of) {name} must be")
                        # A refused secret is not echoed.
                        for secret in ("hunter2", "secret-key-material"):
                            self.assertNotIn(secret, proc.stdout + proc.stderr)
                for name, value in [("etcd_endpoints", ["https://[fd00::5]:2379", "https://etcd.example.internal"]),
                                    ("etcd_prefix", "/team-a/swarm/prod/"), ("etcd_prefix", "/x/"),
                                    ("etcd_user", "user@corp"), ("etcd_password", "pass with inner spaces")]:
                    with self.subTest(cloud=cloud, accepted=name, value=value):
                        got = root.apply(dict(self.good, **{name: value}))
                        self.assertIsInstance(got, dict, getattr(got, "stderr", ""))

    def test_inputs_that_go_together(self):
        g = self.good
        cases = [
            ({}, []),  # the module's defaults: backend coordinator (AWS: secrets-manager), no etcd
            (g, []),
            (dict(g, etcd_endpoints=[]), ["needs etcd_endpoints"]),
            (dict(g, etcd_ca_pem=""), ["needs etcd_ca_pem"]),
            (dict(g, etcd_client_key_pem=""), ["etcd_client_cert_pem and etcd_client_key_pem go together"]),
            (dict(g, etcd_client_cert_pem=""), ["etcd_client_cert_pem and etcd_client_key_pem go together"]),
            (dict(g, etcd_password=""), ["etcd_user and etcd_password go together"]),
            (dict(g, etcd_user=""), ["etcd_user and etcd_password go together", "etcd_worker_user needs etcd_user"]),
            (dict(g, etcd_worker_password=""), ["etcd_worker_user and etcd_worker_password go together"]),
            (dict(g, etcd_worker_user=""), ["etcd_worker_user and etcd_worker_password go together"]),
            (dict(g, etcd_endpoints=[], etcd_ca_pem=""), ["needs etcd_endpoints", "needs etcd_ca_pem"]),
            # Certificates only, or a user only: both fine.
            (dict(g, etcd_user="", etcd_password="", etcd_worker_user="", etcd_worker_password=""), []),
            (dict(g, etcd_client_cert_pem="", etcd_client_key_pem=""), []),
            (dict(g, etcd_worker_user="", etcd_worker_password=""), []),
            # etcd inputs with another backend are a mistake, not silently ignored.
            ({"etcd_endpoints": ["https://10.0.0.5:2379"]}, ["the etcd_* inputs are for backend \"etcd\""]),
            ({"etcd_password": "Zx8kP2qLm9Vt4Rw7"}, ["etcd_user and etcd_password go together",
                                                     "the etcd_* inputs are for backend \"etcd\""]),
            ({"backend": "coordinator", "etcd_prefix": "/x/"}, ["the etcd_* inputs are for backend \"etcd\", and backend is \"coordinator\""]),
        ]
        for cloud in MODULES:
            text = tt.raw(MODULES[cloud])
            # The managers' precondition shows every message (and nothing checks them elsewhere).
            manager = tt.resource_body(text, INSTANCE[cloud], "manager")
            self.assertIn("condition     = length(local.etcd_input_errors) == 0", manager)
            self.assertIn('error_message = join(" ", local.etcd_input_errors)', manager)
            self.assertEqual(len(re.findall(r"\blocal\.etcd_input_errors\b", text)), 2)
            with tempfile.TemporaryDirectory(prefix="swarmstrap-tf-") as tmp:
                root = ModuleRoot(cloud, tmp)
                for values, want in cases:
                    with self.subTest(cloud=cloud, values=sorted(values), want=want):
                        got = root.apply(values)
                        self.assertIsInstance(got, dict, getattr(got, "stderr", ""))
                        self.assertEqual(len(got["errors"]), len(want), got["errors"])
                        for message, fragment in zip(got["errors"], want):
                            self.assertIn(fragment, message)
                            self.assertRegex(message, r"(set|give|e\.g\.|remove|need)")
                        for message in got["errors"]:
                            for secret in ("Zx8kP2qLm9Vt4Rw7", "Wq3nB6yTc1Hs5Kd9", "PRIVATE KEY"):
                                self.assertNotIn(secret, message)

    def test_prefixes_and_each_kinds_login(self):
        g = self.good
        for cloud in MODULES:
            with tempfile.TemporaryDirectory(prefix="swarmstrap-tf-") as tmp:
                root = ModuleRoot(cloud, tmp)
                with self.subTest(cloud=cloud, case="default prefix, own worker login"):
                    got = root.apply(g)
                    self.assertEqual(got["prefixes"], {"shared": "/swarmstrap/prod/", "managers": "/swarmstrap/prod.managers/"})
                    self.assertEqual(got["login"], {
                        "manager": {"user": "swarmstrap-prod-manager", "password": "Zx8kP2qLm9Vt4Rw7"},
                        "worker": {"user": "swarmstrap-prod-worker", "password": "Wq3nB6yTc1Hs5Kd9"}})
                with self.subTest(cloud=cloud, case="own prefix, workers use the managers' login"):
                    got = root.apply(dict(g, etcd_prefix="/team-a/prod/", etcd_worker_user="", etcd_worker_password=""))
                    self.assertEqual(got["prefixes"], {"shared": "/team-a/prod/", "managers": "/team-a/prod.managers/"})
                    self.assertEqual(got["login"]["worker"], got["login"]["manager"])
                    self.assertEqual(got["login"]["manager"]["user"], "swarmstrap-prod-manager")
                with self.subTest(cloud=cloud, case="not etcd: no login"):
                    got = root.apply({})
                    self.assertEqual(got["login"], {"manager": {"user": "", "password": ""},
                                                    "worker": {"user": "", "password": ""}})


class EtcdModuleWiringTest(unittest.TestCase):
    def test_no_coordinator_and_no_secrets_with_etcd(self):
        for cloud, resources in COORDINATOR_RESOURCES.items():
            text = tt.raw(MODULES[cloud])
            self.assertEqual(tt.local_value(text, "coordinator"), 'var.backend == "coordinator"')
            self.assertEqual(tt.local_value(text, "etcd"), 'var.backend == "etcd"')
            for rtype, name in resources:
                with self.subTest(cloud=cloud, resource=f"{rtype}.{name}"):
                    self.assertRegex(tt.resource_body(text, rtype, name), r"\n\s*count\s*=\s*local\.coordinator \? 1 : 0\n")
                    # Every other reference to it is indexed (it is counted), and (DigitalOcean,
                    # Scaleway, whose resources were not counted before) a state from before
                    # keeps it through a moved block.
                    unindexed = re.findall(rf"(?<![\w.]){rtype}\.{name}\b(?!\[)", text)
                    if cloud != "aws":
                        self.assertRegex(text, rf"moved\s*\{{\s*from\s*=\s*{rtype}\.{name}\s*to\s*=\s*{rtype}\.{name}\[0\]\s*\}}")
                        # The moved block; on Scaleway also the nodes' depends_on (allowed on a counted resource).
                        depends_on = 2 if (cloud, rtype) == ("scaleway", "scaleway_instance_server") else 0
                        self.assertEqual(len(unindexed), 1 + depends_on, unindexed)
            if cloud == "aws":
                # Secrets Manager: secrets and the nodes' grants only with its own backend.
                self.assertEqual(tt.local_value(text, "secrets_manager"), 'var.backend == "secrets-manager"')
                for rtype, name in (("aws_secretsmanager_secret", "rendezvous"), ("aws_secretsmanager_secret", "managers"),
                                    ("aws_iam_role_policy", "manager"), ("aws_iam_role_policy", "worker")):
                    self.assertRegex(tt.resource_body(text, rtype, name), r"\n\s*count\s*=\s*local\.secrets_manager \? 1 : 0\n")
            node_vars = tt.local_value(text, "node_vars")
            self.assertRegex(node_vars, r'\n\s*join_secret\s*=\s*local\.coordinator \? random_password\.cluster_secret\[0\]\.result : ""\n')
            self.assertRegex(node_vars, r"\n\s*backend\s*=\s*var\.backend\n")
            # The binaries' pair check lives on the managers, which exist with every backend.
            self.assertIn("(var.agent_url == null) == (var.agent_sha256 == null)",
                          tt.resource_body(text, INSTANCE[cloud], "manager"))

    def test_every_backend_passes_the_etcd_template_variables(self):
        for cloud in MODULES:
            text = tt.raw(MODULES[cloud])
            node_vars = tt.local_value(text, "node_vars")
            for name, expr in TEMPLATE_ETCD.items():
                with self.subTest(cloud=cloud, var=name):
                    empty = "[]" if name == "etcd_endpoints" else '""'
                    self.assertRegex(node_vars, rf"\n\s*{name}\s*=\s*local\.etcd \? {re.escape(expr)} : {re.escape(empty)}\n")
            # The login per node kind: each node template call merges its kind's.
            calls = [a for a in tt.calls(text, "templatefile") if "node.yaml.tftpl" in a[0]]
            self.assertTrue(calls)
            for args in calls:
                with self.subTest(cloud=cloud, call=args[1][:60]):
                    keys = tt.vars_arg_keys(args[1], text)
                    self.assertTrue({"etcd_user", "etcd_password", "role"} | set(TEMPLATE_ETCD) <= keys, keys)
                    kind = re.search(r'role = (?:"(\w+)"|role)', args[1])
                    login = re.findall(r"etcd_(user|password) = local\.etcd_login(?:\[role\]|\.(\w+))\.(user|password)", args[1])
                    self.assertEqual(len(login), 2, args[1])
                    for field, fixed_kind, attr in login:
                        self.assertEqual(field, attr)
                        self.assertEqual(fixed_kind, kind.group(1) or "")

    def test_no_output_reaches_a_secret(self):
        # Every output's value, with the locals it uses followed transitively, refers to no
        # sensitive input and to no user-data (which carries them); no output is marked
        # sensitive to hide one.
        for cloud, d in MODULES.items():
            text = tt.raw(d)
            declared = tt.declared_variables(d)
            for name in SENSITIVE:
                self.assertIs(tt.scalar(declared[name].get("sensitive")), True, f"{cloud} {name}")
            body = tt.read_text(os.path.join(d, "outputs.tf"))
            for m in re.finditer(r'(?m)^output "([^"]+)" \{', body):
                block = body[m.start() : tt.balanced(body, m.end() - 1)]
                with self.subTest(cloud=cloud, output=m.group(1)):
                    self.assertNotRegex(block, r"\n\s*sensitive\s*=")
                    seen, todo, refs = set(), [block], set()
                    while todo:
                        expr = todo.pop()
                        refs |= set(re.findall(r"\bvar\.(\w+)", expr))
                        for local in re.findall(r"\blocal\.(\w+)", expr):
                            if local not in seen:
                                seen.add(local)
                                todo.append(tt.local_value(text, local))
                    self.assertFalse(refs & set(SENSITIVE), refs)
                    self.assertFalse(seen & {"etcd_login", "node_vars", "node_cloud_config", "node_user_data",
                                             "manager_cloud_config", "worker_cloud_config", "manager_user_data",
                                             "worker_user_data"}, seen)
                    self.assertNotRegex(block, r"user_data|random_password")

    def test_etcd_prefixes_output(self):
        for cloud, d in MODULES.items():
            with self.subTest(cloud):
                body = tt.read_text(os.path.join(d, "outputs.tf"))
                self.assertIn('output "etcd_prefixes" {', body)
                self.assertIn("value       = local.etcd ? { shared = local.etcd_prefix, managers = local.etcd_managers_prefix } : null", body)
                text = tt.raw(d)
                self.assertEqual(tt.local_value(text, "etcd_managers_prefix"), '"${trimsuffix(local.etcd_prefix, "/")}.managers/"')
                for output in ("coordinator_url", "coordinator_fingerprint"):
                    self.assertRegex(body, rf'output "{output}" \{{\n  description = "[^\n]*\n  value       = local\.coordinator \? ')


class EtcdUserDataTest(unittest.TestCase):
    """Each module's own variable blocks and etcd expressions (node_vars and its per-kind
    login), through a real Terraform's templatefile() of cloud-init/node.yaml.tftpl: the
    managers' and the workers' user-data for backend "etcd" pass `cloud-init schema`, write the
    CA, the client certificate, the key (0600) and the kind's password (0600) and an [etcd] table
    pointing at them; with the module's other backends no etcd file or table appears."""

    ENDPOINTS = ["https://10.0.0.5:2379", "https://10.0.0.6:2379"]

    @classmethod
    def setUpClass(cls):
        cls.pem = pems()
        cls.etcd = {"backend": "etcd", "etcd_endpoints": cls.ENDPOINTS, "etcd_ca_pem": cls.pem["cert"],
                    "etcd_client_cert_pem": cls.pem["cert"], "etcd_client_key_pem": cls.pem["key"],
                    "etcd_user": "swarmstrap-prod-manager", "etcd_password": "Zx8kP2qLm9Vt4Rw7",
                    "etcd_worker_user": "swarmstrap-prod-worker", "etcd_worker_password": "Wq3nB6yTc1Hs5Kd9"}

    def render(self, cloud: str, values: dict) -> dict:
        """kind -> rendered user-data, by Terraform, as the module renders it."""
        text = tt.raw(MODULES[cloud])
        node_vars = tt.local_value(text, "node_vars")
        exprs = {name: re.search(rf"\n\s*{name}\s*=\s*(.*)\n", node_vars).group(1) for name in TEMPLATE_ETCD}
        exprs["backend"] = "var.backend"
        others = nodecfg.node_vars(cluster="prod", coordinator_url="https://10.0.0.2:8443",
                                      coordinator_fingerprint="sha256:" + "a" * 64, join_secret="s" * 20,
                                      advertise_addr="10.0.0.11", cloud_provider=cloud)
        others = {k: v for k, v in others.items() if k not in exprs and not k.startswith("etcd_") and k != "role"}
        if values.get("backend", "etcd") == "secrets-manager":
            others.update(sm_secret_name="swarmstrap/prod-0a1b2c3d", sm_region="eu-west-1")
        outputs = []
        for kind in ("manager", "worker"):
            login = {"etcd_user": f"local.etcd_login.{kind}.user", "etcd_password": f"local.etcd_login.{kind}.password"}
            merged = ", ".join(f"{k} = {v}" for k, v in {**exprs, **login, "role": json.dumps(kind)}.items())
            outputs.append(f'locals {{\n  {kind}_user_data = templatefile({json.dumps(nodecfg.NODE_TEMPLATE)}, '
                           f'merge(jsondecode(file("${{path.module}}/others.json")), {{ {merged} }}))\n}}\n'
                           f'output "{kind}" {{\n  sensitive = true\n  value     = local.{kind}_user_data\n}}\n'
                           # What the AWS module checks against its 16 KB user-data limit.
                           f'output "{kind}_b64gzip_length" {{\n  sensitive = true\n'
                           f'  value     = length(base64gzip(local.{kind}_user_data))\n}}\n')
        with tempfile.TemporaryDirectory(prefix="swarmstrap-tf-") as tmp:
            root = ModuleRoot(cloud, tmp)
            with open(os.path.join(tmp, "others.json"), "w") as f:
                json.dump(others, f)
            with open(os.path.join(tmp, "render.tf"), "w") as f:
                f.write("\n".join(outputs))
            got = root.apply(values)
        self.assertIsInstance(got, dict, getattr(got, "stderr", ""))
        self.sizes = {kind: got[f"{kind}_b64gzip_length"] for kind in ("manager", "worker")}
        return {kind: got[kind] for kind in ("manager", "worker")}

    def test_etcd_user_data_for_managers_and_workers(self):
        import tomllib

        import test_cloudinit

        for cloud in MODULES:
            rendered = self.render(cloud, self.etcd)
            for kind, user_data in rendered.items():
                with self.subTest(cloud=cloud, kind=kind):
                    proc = test_cloudinit.cloud_init_schema(user_data)
                    self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
                    files = nodecfg.write_files(user_data)
                    cfg = tomllib.loads(files[nodecfg.CONFIG_PATH]["content"])
                    self.assertEqual(cfg["backend"], "etcd")
                    self.assertEqual(cfg["role"], kind)
                    etcd = cfg["etcd"]
                    self.assertEqual(etcd["endpoints"], self.ENDPOINTS)
                    self.assertEqual(etcd["prefix"], "/swarmstrap/prod/")
                    self.assertEqual(etcd["user"], self.etcd["etcd_user" if kind == "manager" else "etcd_worker_user"])
                    password = self.etcd["etcd_password" if kind == "manager" else "etcd_worker_password"]
                    for key, content, mode in (("ca_file", self.pem["cert"], None), ("cert_file", self.pem["cert"], None),
                                               ("key_file", self.pem["key"], "0600"), ("password_file", password, "0600")):
                        entry = files[etcd[key]]
                        self.assertEqual(entry["content"].strip(), content.strip(), key)
                        if mode:
                            self.assertEqual(entry["permissions"], mode, key)
                            self.assertEqual(entry["owner"], "root:root", key)
                    self.assertNotIn(nodecfg.JOIN_SECRET_PATH, files)
                    self.assertNotIn("coordinator", cfg)
                    # The other kind's password is not on this node.
                    other = self.etcd["etcd_worker_password" if kind == "manager" else "etcd_password"]
                    self.assertNotIn(other, user_data)

    def test_aws_user_data_limit_with_etcd_certificates(self):
        # The PEMs travel in the user-data, which AWS caps at 16 KB (gzipped here): RSA-2048 (a
        # common etcd PKI) fits with room for cloud_config_extra; RSA-4096 with a two-certificate
        # CA bundle does not, and the module's precondition (the same length(base64gzip())
        # against user_data_b64_limit) refuses the plan, naming the PEMs, instead of launching
        # instances whose user-data AWS rejects.
        def rsa(tmp, bits, name):
            subprocess.run(["openssl", "req", "-x509", "-newkey", f"rsa:{bits}", "-nodes", "-keyout", f"{tmp}/{name}.key",
                            "-out", f"{tmp}/{name}.pem", "-days", "3650", "-subj", f"/CN={name}"],
                           check=True, capture_output=True)
            return tt.read_text(f"{tmp}/{name}.pem"), tt.read_text(f"{tmp}/{name}.key")

        text = tt.raw(MODULES["aws"])
        limit = int(tt.local_value(text, "user_data_b64_limit"))
        for kind in ("manager", "worker"):
            body = tt.resource_body(text, "aws_instance", kind)
            self.assertIn(f'length(base64gzip(local.node_user_data["{kind}"])) <= local.user_data_b64_limit', body)
            self.assertRegex(body, r"error_message = \"The \w+' user-data is more than 16383 bytes gzipped[^\n]*etcd_ca_pem")
        with tempfile.TemporaryDirectory() as tmp:
            (ca, _), (cert, key) = rsa(tmp, 2048, "ca"), rsa(tmp, 2048, "client")
            self.render("aws", dict(self.etcd, etcd_ca_pem=ca, etcd_client_cert_pem=cert, etcd_client_key_pem=key))
            for kind, size in self.sizes.items():
                with self.subTest(rsa=2048, kind=kind):
                    self.assertLess(size, limit - 2048, f"{kind}: {size} of {limit} base64 characters")
            (ca1, _), (ca2, _), (cert, key) = rsa(tmp, 4096, "ca1"), rsa(tmp, 4096, "ca2"), rsa(tmp, 4096, "client")
            self.render("aws", dict(self.etcd, etcd_ca_pem=ca1 + ca2, etcd_client_cert_pem=cert, etcd_client_key_pem=key))
            for kind, size in self.sizes.items():
                with self.subTest(rsa=4096, kind=kind):
                    self.assertGreater(size, limit, f"{kind}: {size} of {limit} base64 characters")

    def test_other_backends_get_no_etcd(self):
        for cloud in MODULES:
            for backend in BACKENDS[cloud]:
                if backend == "etcd":
                    continue
                with self.subTest(cloud=cloud, backend=backend):
                    rendered = self.render(cloud, {"backend": backend})
                    for user_data in rendered.values():
                        self.assertNotIn("[etcd]", user_data)
                        self.assertNotIn("/etc/swarm-agent/etcd-", user_data)


def readme_etcdctl_steps(cloud: str) -> list[str]:
    text = tt.read_text(os.path.join(MODULES[cloud], "README.md"))
    section = text[text.index('## Backend "etcd"'):]
    steps = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    return [re.sub(r"\s+#.*$", "", line).strip() for line in steps.splitlines() if line.startswith("etcdctl ")]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@unittest.skipUnless(shutil_which("etcd") and shutil_which("etcdctl"), "no etcd/etcdctl here (Debian etcd-server, etcd-client)")
class EtcdRoleLayoutTest(unittest.TestCase):
    """The READMEs' etcdctl steps, run as written against a real etcd (3.4, one member on
    loopback, auth enabled afterwards): the manager user reads and writes both of the cluster's
    prefixes, the worker user the shared one only (not the managers' prefix, where the manager
    join token lives), neither another cluster's. Passwords go through stdin and the HTTP
    gateway's request bodies, never argv."""

    @classmethod
    def setUpClass(cls):
        import secrets
        import time
        import urllib.request

        cls.tmp = tempfile.mkdtemp(prefix="swarmstrap-etcd-")
        client, peer = free_port(), free_port()
        cls.url = f"http://127.0.0.1:{client}"
        cls.log = open(os.path.join(cls.tmp, "etcd.log"), "w")
        cls.proc = subprocess.Popen(
            ["etcd", "--name", "t", "--data-dir", os.path.join(cls.tmp, "data"),
             "--listen-client-urls", cls.url, "--advertise-client-urls", cls.url,
             "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
             "--initial-cluster", f"t=http://127.0.0.1:{peer}"],
            stdout=cls.log, stderr=subprocess.STDOUT)
        # Ready: /health answers (capped exponential backoff within a deadline).
        deadline, delay = time.monotonic() + 30, 0.05
        while True:
            try:
                with urllib.request.urlopen(cls.url + "/health", timeout=2) as r:
                    if json.loads(r.read()).get("health") == "true":
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or cls.proc.poll() is not None:
                cls.tearDownClass()
                raise RuntimeError(f"etcd did not become healthy; see {cls.log.name}")
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
        cls.passwords = {name: secrets.token_urlsafe(18) for name in
                         ("root", "swarmstrap-prod-manager", "swarmstrap-prod-worker")}

    @classmethod
    def tearDownClass(cls):
        import shutil

        if cls.proc.poll() is None:
            cls.proc.terminate()
            try:
                cls.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                cls.proc.kill()
                cls.proc.wait()
        cls.log.close()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def etcdctl(self, args: list[str], stdin: str = "") -> subprocess.CompletedProcess:
        return subprocess.run(["etcdctl", f"--endpoints={self.url}", *args], input=stdin, capture_output=True,
                              text=True, timeout=60, env=dict(os.environ, ETCDCTL_API="3"))

    def call(self, path: str, body: dict, token: str = "") -> tuple[int, dict]:
        import urllib.error
        import urllib.request

        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", **({"Authorization": token} if token else {})})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def can(self, token: str, op: str, key: str) -> bool:
        import base64

        k = base64.b64encode(key.encode()).decode()
        body = {"key": k, "value": base64.b64encode(b"x").decode()} if op == "put" else {"key": k}
        status, answer = self.call(f"/v3/kv/{'put' if op == 'put' else 'range'}", body, token)
        if status == 200 and "error" not in answer:
            return True
        # Refused by etcd's auth (not some other failure): no permission, or no user at all.
        self.assertRegex(answer.get("error", ""), r"permission denied|user name is empty", answer)
        return False

    def test_the_readme_steps_give_each_kind_its_prefixes(self):
        steps = {cloud: readme_etcdctl_steps(cloud) for cloud in MODULES}
        self.assertEqual(steps["aws"], steps["digitalocean"])
        self.assertEqual(steps["aws"], steps["scaleway"])
        for line in steps["aws"]:
            args = line.split()[1:]
            stdin = ""
            if args[:2] == ["user", "add"]:
                args.append("--interactive=false")
                stdin = self.passwords[args[2]] + "\n"
            proc = self.etcdctl(args, stdin)
            self.assertEqual(proc.returncode, 0, f"{line}: {proc.stderr}")
        for args in (["user", "add", "root", "--interactive=false"], ["user", "grant-role", "root", "root"], ["auth", "enable"]):
            proc = self.etcdctl(args, self.passwords["root"] + "\n" if "add" in args else "")
            self.assertEqual(proc.returncode, 0, proc.stderr)
        tokens = {}
        for user in ("swarmstrap-prod-manager", "swarmstrap-prod-worker"):
            status, answer = self.call("/v3/auth/authenticate", {"name": user, "password": self.passwords[user]})
            self.assertEqual(status, 200, answer)
            tokens[user] = answer["token"]
        manager, worker = tokens["swarmstrap-prod-manager"], tokens["swarmstrap-prod-worker"]
        shared, managers, other = "/swarmstrap/prod/state", "/swarmstrap/prod.managers/tokens/ab12", "/swarmstrap/other/state"
        for op in ("put", "get"):
            with self.subTest(op=op):
                self.assertTrue(self.can(manager, op, shared))
                self.assertTrue(self.can(manager, op, managers))
                self.assertTrue(self.can(worker, op, shared))
                self.assertFalse(self.can(worker, op, managers))
                self.assertFalse(self.can(manager, op, other))
                self.assertFalse(self.can(worker, op, other))
        # Without a token (auth on, no client certificates here) nothing is readable.
        self.assertFalse(self.can("", "get", shared))


class EtcdReadmeTest(unittest.TestCase):
    def test_readmes_give_the_role_layout_and_where_the_credentials_go(self):
        for cloud, d in MODULES.items():
            with self.subTest(cloud):
                text = tt.read_text(os.path.join(d, "README.md"))
                section = text[text.index('## Backend "etcd"'):]
                section = section[: section.index("\n## ", 1)]
                for phrase in ("`swarmstrap-prod-worker` | readwrite, prefix `/swarmstrap/prod/` |",
                               "`swarmstrap-prod-manager` | readwrite, prefix `/swarmstrap/prod/` and prefix `/swarmstrap/prod.managers/`",
                               '`role = "auto"`', "needs the manager role", "etcd_worker_user", "etcd_prefixes",
                               "metadata", "swarmstrap-metadata-block.service", "Terraform state",
                               "etcd-client.key` (0600)", "etcd-password`\n(0600)"):
                    self.assertIn(phrase, section)
                # The etcdctl steps grant exactly the table's prefixes and never take a password in argv.
                steps = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
                grants = re.findall(r"grant-permission (\S+) --prefix=true readwrite (\S+)", steps)
                self.assertEqual(sorted(grants), sorted([("swarmstrap-prod-manager", "/swarmstrap/prod/"),
                                                         ("swarmstrap-prod-manager", "/swarmstrap/prod.managers/"),
                                                         ("swarmstrap-prod-worker", "/swarmstrap/prod/")]))
                self.assertNotRegex(steps, r"user add \S+:|--new-user-password")
        top = tt.read_text(os.path.join(tt.TF, "README.md"))
        self.assertIn("`swarmstrap-prod-manager` | readwrite, prefix `/swarmstrap/prod/` and prefix `/swarmstrap/prod.managers/`", top)
        self.assertIn('`role = "auto"`) needs the manager role', top)


if __name__ == "__main__":
    unittest.main()
