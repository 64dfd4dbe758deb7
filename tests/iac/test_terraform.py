"""Static checks of terraform/: every .tf parses (python-hcl2), references resolve, variables
and outputs are documented, templatefile() calls pass exactly the variables their templates
use, README usage blocks work as written, scaling workers cannot touch other nodes, the
coordinator pin is computed correctly (checked with a real Terraform and openssl), the AWS
module's managers and workers get separate least-privilege roles for its two secrets (policies
rendered by a real Terraform, resources checked under IAM's glob rules), and `terraform fmt` is
clean. checkov itself runs from run.sh."""

from __future__ import annotations

import base64
import glob
import json
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import tomllib
import unittest

import hcl2
import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import nodecfg  # noqa: E402
import readme_tables  # noqa: E402
import tfbin  # noqa: E402
import tfrender  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TF = os.path.join(REPO, "terraform")
MODULES = {c: os.path.join(TF, "modules", c) for c in ("aws", "digitalocean", "scaleway")}
EXAMPLES = {c: os.path.join(TF, "examples", c) for c in ("aws", "digitalocean", "scaleway")}
META_ARGS = {"source", "version", "providers", "count", "for_each", "depends_on"}


# ----------------------------------------------------------------------------------------------
# Helpers: python-hcl2 for structure (its output format differs between releases, so values
# are unwrapped), plus a small scanner over the raw text for expressions.


def unquote(v):
    """python-hcl2 >= 7 keeps string literals quoted ("\"x\""); older releases and checkov's
    fork (bc-python-hcl2, which installs the same `hcl2` module) do not."""
    if isinstance(v, str) and len(v) >= 2 and v[0] == '"' and v[-1] == '"':
        try:
            return json.loads(v)
        except ValueError:
            return v[1:-1]
    return v


def scalar(v):
    while isinstance(v, list) and len(v) == 1:
        v = v[0]
    return unquote(v)


def load(path) -> dict:
    with open(path, encoding="utf-8") as f:
        return hcl2.load(f)


def blocks(doc: dict, kind: str):
    for entry in doc.get(kind, []):
        for name, body in entry.items():
            if not name.startswith("__"):
                yield unquote(name), body


def tf_files(d):
    return sorted(glob.glob(os.path.join(d, "*.tf")))


def module_docs(d):
    return {os.path.basename(p): load(p) for p in tf_files(d)}


def declared_variables(d) -> dict:
    out = {}
    for doc in module_docs(d).values():
        for name, body in blocks(doc, "variable"):
            out[name] = body
    return out


def declared_outputs(d) -> dict:
    out = {}
    for doc in module_docs(d).values():
        for name, body in blocks(doc, "output"):
            out[name] = body
    return out


def strip_comments(text: str) -> str:
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(text[i : j + 1])
            i = j + 1
        elif c == "#" or text.startswith("//", i):
            while i < n and text[i] != "\n":
                i += 1
        elif text.startswith("/*", i):
            i = text.index("*/", i) + 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def read_text(path) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def raw(d) -> str:
    return "\n".join(strip_comments(read_text(p)) for p in tf_files(d))


def balanced(text: str, start: int) -> int:
    """Index just past the bracket that closes the one at text[start] (skips strings)."""
    pairs = {"(": ")", "{": "}", "[": "]"}
    stack, i = [], start
    while i < len(text):
        c = text[i]
        if c == '"':
            i += 1
            while text[i] != '"':
                i += 2 if text[i] == "\\" else 1
        elif c in pairs:
            stack.append(pairs[c])
        elif stack and c == stack[-1]:
            stack.pop()
            if not stack:
                return i + 1
        i += 1
    raise ValueError(f"unbalanced bracket at {start}")


def split_top(text: str, sep=",") -> list[str]:
    parts, depth, cur, i = [], 0, [], 0
    while i < len(text):
        c = text[i]
        if c == '"':
            j = i + 1
            while text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            cur.append(text[i : j + 1])
            i = j + 1
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        if c == sep and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
        else:
            cur.append(c)
        i += 1
    if "".join(cur).strip():
        parts.append("".join(cur).strip())
    return parts


def inside_string(text: str, pos: int) -> bool:
    """Whether pos is inside a quoted string of its line (HCL strings do not span lines), e.g.
    the `file("ca.pem")` an error message suggests."""
    before = text[text.rfind("\n", 0, pos) + 1 : pos]
    return len(re.findall(r'(?<!\\)"', before)) % 2 == 1


def calls(text: str, fn: str) -> list[list[str]]:
    out = []
    for m in re.finditer(rf"\b{fn}\(", text):
        if inside_string(text, m.start()):
            continue
        end = balanced(text, m.end() - 1)
        out.append(split_top(text[m.end() : end - 1]))
    return out


def object_keys(obj: str) -> set[str]:
    obj = obj.strip()
    assert obj.startswith("{") and obj.endswith("}"), obj
    keys = set()
    for line in split_top(obj[1:-1].replace("\n", ","), ","):
        m = re.match(r'^"?([A-Za-z_][A-Za-z0-9_-]*)"?\s*[=:]', line)
        if m:
            keys.add(m.group(1))
    return keys


def local_value(text: str, name: str) -> str:
    m = re.search(rf"(?m)^\s*{name}\s*=\s*", text)
    assert m, f"local {name} not found"
    start = m.end()
    if text[start] in "{[(":
        return text[start : balanced(text, start)]
    return text[start : text.index("\n", start)].strip()


def resource_body(text: str, rtype: str, name: str) -> str:
    m = re.search(rf'resource\s+"{rtype}"\s+"{name}"\s*\{{', text)
    assert m, f"resource {rtype}.{name} not found"
    return text[m.end() - 1 : balanced(text, m.end() - 1)]


def resolve_path(expr: str, module_dir: str, text: str) -> str:
    expr = expr.strip().strip('"')

    def sub(m):
        ref = m.group(1)
        if ref == "path.module":
            return module_dir
        if ref.startswith("local."):
            return resolve_path(local_value(text, ref[6:]), module_dir, text)
        raise AssertionError(f"cannot resolve ${{{ref}}} in a path")

    return os.path.normpath(re.sub(r"\$\{([^}]+)\}", sub, expr))


def vars_arg_keys(arg: str, text: str) -> set[str]:
    arg = arg.strip()
    if arg.startswith("{"):
        return object_keys(arg)
    m = re.match(r"^merge\((.*)\)$", arg, re.S)
    if m:
        keys = set()
        for part in split_top(m.group(1)):
            keys |= vars_arg_keys(part, text)
        return keys
    m = re.match(r"^local\.([A-Za-z_][A-Za-z0-9_]*)$", arg)
    if m:
        return vars_arg_keys(local_value(text, m.group(1)), text)
    raise AssertionError(f"cannot tell the keys of templatefile vars {arg!r}")


def make_cert(tmp: str) -> tuple[str, bytes]:
    key, crt = os.path.join(tmp, "k.pem"), os.path.join(tmp, "c.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", key, "-out", crt, "-days", "3650", "-subj", "/CN=swarm-coordinator/O=swarmstrap",
         "-addext", "subjectAltName=IP:172.16.64.5,DNS:swarm-coordinator.prod.internal"],
        check=True, capture_output=True,
    )
    der = subprocess.run(["openssl", "x509", "-in", crt, "-outform", "DER"], check=True, capture_output=True).stdout
    with open(crt) as f:
        return f.read(), der


# ----------------------------------------------------------------------------------------------


class ParseAndReferenceTest(unittest.TestCase):
    def test_every_tf_file_parses(self):
        files = glob.glob(os.path.join(TF, "**", "*.tf"), recursive=True)
        self.assertGreaterEqual(len(files), 16)
        for path in files:
            with self.subTest(os.path.relpath(path, REPO)):
                self.assertIsInstance(load(path), dict)

    def test_standard_module_structure(self):
        for cloud, d in MODULES.items():
            with self.subTest(cloud):
                for name in ("main.tf", "variables.tf", "outputs.tf", "versions.tf", "README.md"):
                    self.assertTrue(os.path.isfile(os.path.join(d, name)), name)
                terraform = scalar(dict(blocks(module_docs(d)["versions.tf"], "terraform")) or
                                   module_docs(d)["versions.tf"]["terraform"])
                text = read_text(os.path.join(d, "versions.tf"))
                self.assertRegex(text, r'required_version\s*=\s*">= 1\.\d+\.\d+"')
                for provider in re.findall(r"(\w+)\s*=\s*\{\s*source", text):
                    self.assertRegex(text, rf'{provider}\s*=\s*\{{\s*source\s*=\s*"[^"]+"\s*version\s*=\s*">= [0-9.]+, < [0-9.]+"')
                self.assertIsNotNone(terraform)

    def test_every_var_reference_is_declared(self):
        for d in list(MODULES.values()) + list(EXAMPLES.values()):
            with self.subTest(os.path.relpath(d, REPO)):
                used = set(re.findall(r"\bvar\.([A-Za-z_][A-Za-z0-9_-]*)", raw(d)))
                declared = set(declared_variables(d))
                self.assertFalse(used - declared, f"undeclared: {sorted(used - declared)}")
                self.assertFalse(declared - used, f"declared but unused: {sorted(declared - used)}")

    def test_every_local_reference_is_defined(self):
        for d in list(MODULES.values()) + list(EXAMPLES.values()):
            with self.subTest(os.path.relpath(d, REPO)):
                text = raw(d)
                used = set(re.findall(r"\blocal\.([A-Za-z_][A-Za-z0-9_]*)", text))
                defined = set()
                for doc in module_docs(d).values():
                    for entry in doc.get("locals", []):
                        defined |= {unquote(k) for k in entry if not k.startswith("__")}
                self.assertFalse(used - defined, f"undefined locals: {sorted(used - defined)}")

    def test_variables_and_outputs_are_documented(self):
        for d in list(MODULES.values()) + list(EXAMPLES.values()):
            rel = os.path.relpath(d, REPO)
            for name, body in declared_variables(d).items():
                with self.subTest(f"{rel} variable {name}"):
                    desc = scalar(body.get("description"))
                    self.assertIsInstance(desc, str)
                    self.assertGreater(len(desc.strip()), 10)
                    self.assertIn("type", body)
            for name, body in declared_outputs(d).items():
                with self.subTest(f"{rel} output {name}"):
                    desc = scalar(body.get("description"))
                    self.assertIsInstance(desc, str)
                    self.assertGreater(len(desc.strip()), 10)

    def test_module_variables_are_validated(self):
        # Every module variable without a free-form nature has a validation block.
        free_form = {"manager_size", "worker_size", "coordinator_size", "ssh_keys", "tags",
                     "manager_instance_type", "worker_instance_type", "coordinator_instance_type",
                     "lb_type", "ssh_key_name", "lb_config_enabled", "coordinator_adopt_running_swarm"}
        for cloud, d in MODULES.items():
            for name, body in declared_variables(d).items():
                if name in free_form:
                    continue
                with self.subTest(f"{cloud} {name}"):
                    self.assertIn("validation", body)

    def test_manager_count_validation_is_odd_only(self):
        for cloud, d in MODULES.items():
            with self.subTest(cloud):
                body = declared_variables(d)["manager_count"]
                cond = scalar(scalar(body["validation"])["condition"])
                self.assertIn("contains([1, 3, 5, 7], var.manager_count)", re.sub(r",(\S)", r", \1", cond))


class TemplatefileTest(unittest.TestCase):
    def test_templatefile_calls_pass_exactly_the_template_variables(self):
        seen = 0
        for cloud, d in MODULES.items():
            text = raw(d)
            for args in calls(text, "templatefile"):
                seen += 1
                with self.subTest(f"{cloud}: {args[0]}"):
                    self.assertEqual(len(args), 2)
                    path = resolve_path(args[0], d, text)
                    self.assertTrue(os.path.isfile(path), path)
                    with open(path, encoding="utf-8") as f:
                        wanted = tfrender.template_variables(f.read())
                    passed = vars_arg_keys(args[1], text)
                    self.assertEqual(passed, wanted)
        self.assertGreaterEqual(seen, 8)

    def test_file_references_exist(self):
        for cloud, d in MODULES.items():
            text = raw(d)
            for args in calls(text, "file"):
                with self.subTest(f"{cloud}: {args[0]}"):
                    self.assertTrue(os.path.isfile(resolve_path(args[0], d, text)))


def variable_block(text: str, name: str) -> str:
    m = re.search(rf'(?m)^variable\s+"{name}"\s*\{{', text)
    assert m, f"variable {name} not found"
    return text[m.start() : balanced(text, m.end() - 1)]


class CoordinatorAdoptTest(unittest.TestCase):
    """coordinator_adopt_running_swarm: only the modules that run a coordinator have it; it
    reaches the coordinator template (and nothing else) as adopt_running_swarm; it is a bool,
    false by default; its description says when to set it; the coordinator ignores user_data
    changes, so setting it never touches a running coordinator; the examples pass it through so
    `terraform apply -replace=... -var coordinator_adopt_running_swarm=true` works from them."""

    VAR = "coordinator_adopt_running_swarm"
    # Every module runs a coordinator (AWS only with backend = "coordinator": a counted resource).
    COORDINATOR = {"digitalocean": "digitalocean_droplet", "scaleway": "scaleway_instance_server", "aws": "aws_instance"}
    ADDRESS = {"digitalocean": "digitalocean_droplet.coordinator[0]", "scaleway": "scaleway_instance_server.coordinator[0]",
               "aws": "aws_instance.coordinator[0]"}

    def test_only_the_coordinator_modules_declare_it(self):
        for cloud in self.COORDINATOR:
            with self.subTest(cloud):
                body = declared_variables(MODULES[cloud])[self.VAR]
                self.assertEqual(scalar(body["type"]).strip("${}"), "bool")
                self.assertIs(scalar(body["default"]), False)
                desc = scalar(body["description"])
                for phrase in (f"-replace='module.NAME.{self.ADDRESS[cloud]}'",
                               f"-var {self.VAR}=true", "cluster create --adopt", "second `swarm init`",
                               "Never for a brand-new cluster", "cluster allow-init",
                               "ignores user_data changes"):
                    self.assertIn(phrase, desc)

    def test_it_reaches_the_coordinator_template_only(self):
        for cloud, rtype in self.COORDINATOR.items():
            with self.subTest(cloud):
                text = raw(MODULES[cloud])
                coordinator = resource_body(text, rtype, "coordinator")
                self.assertIn("coordinator.yaml.tftpl", coordinator)
                self.assertRegex(coordinator, rf"\n\s*adopt_running_swarm\s*=\s*var\.{self.VAR}\n")
                self.assertEqual(len(re.findall(rf"\bvar\.{self.VAR}\b", text)), 1)
                self.assertRegex(coordinator, r"ignore_changes\s*=\s*\[[^\]]*user_data")
                self.assertNotIn("adopt", local_value(text, "node_vars"))

    def test_examples_pass_it_through_false_by_default(self):
        for cloud in self.COORDINATOR:
            with self.subTest(cloud):
                (_, args), = [m for doc in module_docs(EXAMPLES[cloud]).values() for m in blocks(doc, "module")]
                self.assertEqual(scalar(args[self.VAR]).strip("${}"), f"var.{self.VAR}")
                body = declared_variables(EXAMPLES[cloud])[self.VAR]
                self.assertEqual(scalar(body["type"]).strip("${}"), "bool")
                self.assertIs(scalar(body["default"]), False)

    def test_terraform_renders_adopt_only_when_set(self):
        # The module's own variable block, set the way an operator sets it (-var on the command
        # line, or not at all), through Terraform's templatefile(): `--adopt` appears in the
        # coordinator's `cluster create` exactly when the variable is true.
        others = nodecfg.coordinator_vars(
            cluster="prod", cluster_secret="Zx8kP2qLm9Vt4Rw7",
            tls_cert_pem="-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
            tls_key_pem="-----BEGIN EC PRIVATE KEY-----\nMHcC\n-----END EC PRIVATE KEY-----\n",
        )
        del others["adopt_running_swarm"]
        create = ["/usr/local/bin/swarm-coordinator", "cluster", "create", "prod", "--target-managers", "3",
                  "--secret-file", "/etc/swarm-coordinator/cluster.secret",
                  "--operator-credential-out", "/root/swarmstrap-operator-credential",
                  "--data-dir", "/var/lib/swarm-coordinator"]
        for cloud in self.COORDINATOR:
            block = variable_block(read_text(os.path.join(MODULES[cloud], "variables.tf")), self.VAR)
            with tempfile.TemporaryDirectory(prefix="swarmstrap-tf-") as d:
                with open(os.path.join(d, "others.json"), "w") as f:
                    json.dump(others, f)
                with open(os.path.join(d, "main.tf"), "w") as f:
                    f.write(block + "\n\n" + (
                        'output "user_data" {\n'
                        f'  value = templatefile({json.dumps(nodecfg.COORDINATOR_TEMPLATE)}, merge(\n'
                        '    jsondecode(file("${path.module}/others.json")),\n'
                        f'    {{ adopt_running_swarm = var.{self.VAR} }},\n'
                        '  ))\n}\n'))
                tfbin.run(["init", "-input=false", "-no-color"], d)
                for args, adopt in (([], False), ([f"-var={self.VAR}=false"], False), ([f"-var={self.VAR}=true"], True)):
                    with self.subTest(cloud=cloud, args=args):
                        tfbin.run(["apply", "-auto-approve", "-input=false", "-no-color", *args], d)
                        out = json.loads(tfbin.run(["output", "-json", "-no-color"], d).stdout)
                        runcmd = yaml.safe_load(out["user_data"]["value"])["runcmd"]
                        self.assertEqual(runcmd[2], create + (["--adopt"] if adopt else []))
                with self.subTest(cloud=cloud, args="not a bool"):
                    proc = tfbin.run(["apply", "-auto-approve", "-input=false", "-no-color",
                                      f"-var={self.VAR}=yes"], d, check=False)
                    self.assertNotEqual(proc.returncode, 0)
                    self.assertIn("bool", proc.stderr)


class ReleaseVariablesTest(unittest.TestCase):
    """A release version alone installs a cluster: agent_version defaults to the workspace
    version, release_base_url and release_public_key to the project's (release/README.md), and
    the explicit binaries (agent_url/agent_sha256, coordinator_binary_url/_sha256) are optional
    overrides. Checked on the module's own variable blocks and expressions with a real
    Terraform: its validations and its templatefile() of the node template."""

    RELEASE_VARS = ("agent_version", "release_base_url", "release_public_key", "agent_url", "agent_sha256")
    COORD_OVERRIDES = ("coordinator_binary_url", "coordinator_binary_sha256")

    def test_defaults(self):
        for cloud, d in MODULES.items():
            with self.subTest(cloud):
                declared = declared_variables(d)
                self.assertEqual(scalar(declared["agent_version"]["default"]), nodecfg.DEFAULT_VERSION)
                self.assertEqual(scalar(declared["release_base_url"]["default"]), nodecfg.DEFAULT_BASE_URL)
                self.assertEqual(scalar(declared["release_public_key"]["default"]), nodecfg.DEFAULT_PUBLIC_KEY)
                overrides = ("agent_url", "agent_sha256") + (self.COORD_OVERRIDES if cloud != "aws" else ())
                for name in overrides:
                    self.assertIn("default", declared[name], name)
                    self.assertIn(scalar(declared[name]["default"]), (None, "null", "${null}"), name)
                self.assertEqual({n for n, b in declared.items() if "default" not in b}, set(), "required variables")

    def test_examples_need_nothing_but_a_release_version(self):
        for cloud, d in EXAMPLES.items():
            with self.subTest(cloud):
                declared = declared_variables(d)
                self.assertEqual({n for n, b in declared.items() if "default" not in b}, set())
                self.assertEqual(scalar(declared["agent_version"]["default"]), nodecfg.DEFAULT_VERSION)
                (_, args), = [m for doc in module_docs(d).values() for m in blocks(doc, "module")]
                self.assertEqual(scalar(args["agent_version"]).strip("${}"), "var.agent_version")
                for name in ("agent_url", "agent_sha256") + self.COORD_OVERRIDES:
                    self.assertNotIn(name, args)
        for path in glob.glob(os.path.join(TF, "**", "*.md"), recursive=True):
            with self.subTest(os.path.relpath(path, REPO)):
                text = read_text(path)
                self.assertNotIn("example.com", text)
                self.assertNotRegex(text, r"\b0{64}\b")

    def test_templates_get_the_release(self):
        for cloud, d in MODULES.items():
            with self.subTest(cloud):
                node_vars = local_value(raw(d), "node_vars")
                for name in ("agent_version", "release_base_url", "release_public_key"):
                    self.assertRegex(node_vars, rf"\n\s*{name}\s*=\s*var\.{name}\n")
                if cloud != "aws":
                    coordinator = resource_body(raw(d), CoordinatorAdoptTest.COORDINATOR[cloud], "coordinator")
                    for name in ("agent_version", "release_base_url", "release_public_key"):
                        self.assertRegex(coordinator, rf"\n\s*{name}\s*=\s*var\.{name}\n")

    def terraform_node_runcmd(self, cloud, args):
        """Terraform evaluates the module's variable blocks and its agent_url/agent_sha256
        expressions, renders node.yaml.tftpl, and returns (runcmd, [release] table) or the
        failed process."""
        text = read_text(os.path.join(MODULES[cloud], "variables.tf"))
        main = raw(MODULES[cloud])
        others = nodecfg.node_vars(cluster="prod", coordinator_url="https://10.0.0.2:8443",
                                   coordinator_fingerprint="sha256:" + "a" * 64, join_secret="s" * 20)
        for name in self.RELEASE_VARS:
            del others[name]
        agent_url = local_value(main, "agent_url")
        agent_sha = re.search(r"\n\s*agent_sha256\s*=\s*(.*)\n", local_value(main, "node_vars")).group(1)
        with tempfile.TemporaryDirectory(prefix="swarmstrap-tf-") as d:
            with open(os.path.join(d, "others.json"), "w") as f:
                json.dump(others, f)
            with open(os.path.join(d, "main.tf"), "w") as f:
                f.write("\n\n".join(variable_block(text, n) for n in self.RELEASE_VARS) + "\n\n" + (
                    'output "user_data" {\n'
                    f'  value = templatefile({json.dumps(nodecfg.NODE_TEMPLATE)}, merge(\n'
                    '    jsondecode(file("${path.module}/others.json")),\n'
                    '    { agent_version = var.agent_version, release_base_url = var.release_base_url,\n'
                    '      release_public_key = var.release_public_key,\n'
                    f'      agent_url = {agent_url}, agent_sha256 = {agent_sha} }},\n'
                    '  ))\n}\n'))
            tfbin.run(["init", "-input=false", "-no-color"], d)
            proc = tfbin.run(["apply", "-auto-approve", "-input=false", "-no-color", *args], d, check=False)
            if proc.returncode != 0:
                return proc
            out = json.loads(tfbin.run(["output", "-json", "-no-color"], d).stdout)
            doc = yaml.safe_load(out["user_data"]["value"])
            files = {e["path"]: e for e in doc["write_files"]}
            import tomllib
            return doc["runcmd"][1], tomllib.loads(files[nodecfg.CONFIG_PATH]["content"])["release"]

    def test_terraform_renders_the_release_or_the_override(self):
        key = "RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3"
        for cloud in MODULES:
            with self.subTest(cloud=cloud, case="defaults"):
                cmd, release = self.terraform_node_runcmd(cloud, [])
                self.assertEqual(cmd[3:11], ["--name", "swarm-agent", "--version", nodecfg.DEFAULT_VERSION,
                                             "--base-url", nodecfg.DEFAULT_BASE_URL,
                                             "--public-key", nodecfg.DEFAULT_PUBLIC_KEY])
                self.assertEqual(release, {"base_url": nodecfg.DEFAULT_BASE_URL, "public_key": nodecfg.DEFAULT_PUBLIC_KEY})
            with self.subTest(cloud=cloud, case="mirror"):
                cmd, release = self.terraform_node_runcmd(cloud, [
                    "-var=agent_version=0.3.1", "-var=release_base_url=https://mirror.internal/rel",
                    f"-var=release_public_key={key}"])
                self.assertEqual(cmd[5:11], ["--version", "0.3.1", "--base-url", "https://mirror.internal/rel",
                                             "--public-key", key])
                self.assertEqual(release, {"base_url": "https://mirror.internal/rel", "public_key": key})
            with self.subTest(cloud=cloud, case="explicit binary"):
                cmd, _ = self.terraform_node_runcmd(cloud, [
                    "-var=agent_url=https://mirror.internal/v{version}/swarm-agent", f"-var=agent_sha256={'ab' * 32}"])
                self.assertEqual(cmd[5:9], ["--url", f"https://mirror.internal/v{nodecfg.DEFAULT_VERSION}/swarm-agent",
                                            "--sha256", "ab" * 32])
                self.assertNotIn("--version", cmd)
            bad = [("agent_version", "v0.2.0"), ("agent_version", "latest"),
                   ("release_base_url", "http://mirror.internal/rel"), ("release_base_url", "https://m/r?x=1&y"),
                   ("release_public_key", "RWQnotakey"), ("agent_url", "ftp://mirror/x"), ("agent_sha256", "xyz")]
            for name, value in bad:
                with self.subTest(cloud=cloud, refused=f"{name}={value}"):
                    proc = self.terraform_node_runcmd(cloud, [f"-var={name}={value}"])
                    self.assertIsInstance(proc, subprocess.CompletedProcess)
                    self.assertIn(f"The {name} must be", proc.stderr.replace("\n", " "))

    def test_explicit_binaries_come_in_pairs(self):
        for cloud, d in MODULES.items():
            with self.subTest(cloud):
                text = raw(d)
                self.assertIn("(var.agent_url == null) == (var.agent_sha256 == null)", text)
                if cloud != "aws":
                    self.assertIn("(var.coordinator_binary_url == null) == (var.coordinator_binary_sha256 == null)", text)

    def test_arm_instance_types_are_accepted(self):
        # No x86-only validation on the instance types; on AWS the default AMI follows each
        # role's architecture (the instance type's supported_architectures).
        aws = raw(MODULES["aws"])
        for role in ("manager", "worker"):
            block = variable_block(read_text(os.path.join(MODULES["aws"], "variables.tf")), f"{role}_instance_type")
            # The validation checks the form only; the architecture (x86_64 or arm64, nothing
            # else) is a precondition on the instance type's supported_architectures.
            pattern = json.loads(re.search(r'regex\(("[^"]+")', block).group(1))
            for ok in ("t3.small", "t4g.small", "m7g.large", "c6gn.16xlarge", "u-6tb1.metal"):
                self.assertRegex(ok, pattern)
            for bad in ("t3", "T3.small", "t3 .small", ""):
                self.assertNotRegex(bad, pattern)
            self.assertIn("t4g", block)
            self.assertIn(f'condition     = local.arch_supported["{role}"]', resource_body(aws, "aws_instance", role))
            self.assertRegex(aws, rf'data\s+"aws_ec2_instance_type"\s+"{role}"')
            self.assertIn(f'ami                    = local.ami["{role}"]', resource_body(aws, "aws_instance", role))
        self.assertIn("al2023-ami-kernel-default-${each.key}", aws)
        self.assertIn('["x86_64", "arm64"]', aws)
        for cloud, d in MODULES.items():
            with self.subTest(cloud):
                for name, body in declared_variables(d).items():
                    if "type" in name or "size" in name or name == "image":
                        self.assertNotRegex(json.dumps(body), r"x86_64 only|not Graviton")


class ScalingTest(unittest.TestCase):
    """Changing worker_count adds or removes workers and touches no other node."""

    INSTANCE = {"aws": "aws_instance", "digitalocean": "digitalocean_droplet", "scaleway": "scaleway_instance_server"}

    def test_workers_and_managers_are_separate_counted_resources(self):
        for cloud, d in MODULES.items():
            with self.subTest(cloud):
                text = raw(d)
                rtype = self.INSTANCE[cloud]
                manager = resource_body(text, rtype, "manager")
                worker = resource_body(text, rtype, "worker")
                self.assertRegex(manager, r"\n\s*count\s*=\s*var\.manager_count\n")
                self.assertRegex(worker, r"\n\s*count\s*=\s*var\.worker_count\n")
                self.assertIn('"${local.prefix}-worker-${count.index + 1}"', worker)
                self.assertIn('"${local.prefix}-manager-${count.index + 1}"', manager)
                self.assertEqual(local_value(text, "prefix"), "terraform.workspace")
                # Nothing in a node's user-data or in the managers depends on the workers.
                self.assertNotIn("worker", local_value(text, "node_vars"))
                self.assertNotIn("worker", manager.replace('"manager"', ""))
                for body in (manager, worker):
                    self.assertRegex(body, r"ignore_changes\s*=\s*\[[^\]]*user_data")

    def test_only_worker_and_load_balancer_resources_follow_worker_count(self):
        for cloud, d in MODULES.items():
            with self.subTest(cloud):
                text = raw(d)
                for m in re.finditer(r'resource\s+"([a-z0-9_]+)"\s+"([a-z0-9_]+)"\s*\{', text):
                    body = resource_body(text, m.group(1), m.group(2))
                    if "worker" in body:
                        self.assertTrue(
                            m.group(2) == "worker" or m.group(1).startswith(("aws_lb", "scaleway_lb")),
                            f"{m.group(1)}.{m.group(2)} depends on the workers",
                        )


class CoordinatorPinTest(unittest.TestCase):
    """The agents pin sha256(DER of the coordinator certificate). Terraform cannot hash raw
    bytes, so the modules turn the PEM into base64 DER (an expression checked here with a real
    Terraform) and let local_file's content_sha256 hash the decoded bytes."""

    def test_pem_body_expression_yields_the_der(self):
        with tempfile.TemporaryDirectory() as tmp:
            pem, der = make_cert(tmp)
            fingerprint = "sha256:" + hashlib.sha256(der).hexdigest()
            openssl_fp = subprocess.run(
                ["openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", os.path.join(tmp, "c.pem")],
                check=True, capture_output=True, text=True,
            ).stdout.split("=", 1)[1].strip().replace(":", "").lower()
            self.assertEqual(fingerprint, "sha256:" + openssl_fp)
            for cloud in ("digitalocean", "scaleway", "aws"):
                with self.subTest(cloud):
                    text = raw(MODULES[cloud])
                    expr = local_value(text, "coordinator_cert_der_b64")
                    # The coordinator resources exist only with backend = "coordinator".
                    idx, cond = "[0]", "local.coordinator ? "
                    pem_ref = f"tls_self_signed_cert.coordinator{idx}.cert_pem"
                    self.assertIn(pem_ref, expr)
                    fp = f'"sha256:${{local_file.coordinator_cert_der{idx}.content_sha256}}"'
                    self.assertEqual(local_value(text, "coordinator_fingerprint"), f'{cond}{fp}{" : " + chr(34) * 2 if cond else ""}')
                    self.assertIn("content_base64       = local.coordinator_cert_der_b64",
                                  resource_body(text, "local_file", "coordinator_cert_der"))
                    if cond:
                        self.assertTrue(expr.startswith(cond) and expr.endswith(' : ""'), expr)
                        expr = expr[len(cond):-len(' : ""')]
                    outputs = {}
                    files = {}
                    for variant, body in (("lf", pem), ("noeol", pem.rstrip("\n")), ("crlf", pem.replace("\n", "\r\n"))):
                        files[f"{variant}.pem"] = body
                        outputs[variant] = expr.replace(pem_ref, f'file("${{path.module}}/{variant}.pem")')
                    got = tfbin.evaluate(outputs, files)
                    for variant, b64 in got.items():
                        decoded = base64.b64decode(b64, validate=True)
                        self.assertEqual(decoded, der, variant)
                        # What local_file.content_sha256 computes from content_base64:
                        self.assertEqual("sha256:" + hashlib.sha256(decoded).hexdigest(), fingerprint)


def data_body(text: str, dtype: str, name: str) -> str:
    m = re.search(rf'data\s+"{dtype}"\s+"{name}"\s*\{{', text)
    assert m, f"data {dtype}.{name} not found"
    return text[m.end() - 1 : balanced(text, m.end() - 1)]


def iam_glob_match(pattern: str, value: str) -> bool:
    """IAM's matching of a Resource pattern against an ARN: `*` matches any sequence of
    characters (also empty, also `/` and `:`), `?` exactly one character (also `/`), everything
    else itself."""
    import functools

    @functools.lru_cache(maxsize=None)
    def m(i, j):
        if i == len(pattern):
            return j == len(value)
        if pattern[i] == "*":
            return m(i + 1, j) or (j < len(value) and m(i, j + 1))
        return j < len(value) and pattern[i] in ("?", value[j]) and m(i + 1, j + 1)

    return m(0, 0)


def iam_globs_overlap(p: str, q: str) -> bool:
    """Whether some string matches both IAM patterns: with q = "NAME-??????", whether p matches
    the ARN of NAME for *any* six-character suffix."""
    import functools

    @functools.lru_cache(maxsize=None)
    def m(i, j):
        if i == len(p) and j == len(q):
            return True
        if i < len(p) and p[i] == "*" and m(i + 1, j):  # p's * matches nothing more
            return True
        if j < len(q) and q[j] == "*" and m(i, j + 1):
            return True
        if i < len(p) and j < len(q):
            a, b = p[i], q[j]
            if a == "*":  # p's * takes the character q[j] stands for
                return m(i, j + 1)
            if b == "*":
                return m(i + 1, j)
            if "?" in (a, b) or a == b:
                return m(i + 1, j + 1)
        return False

    return m(0, 0)


class AwsLeastPrivilegeTest(unittest.TestCase):
    """Two secrets, two roles. S (the rendezvous: registrations, lease, worker join data) is read
    and written by every node; S/managers (manager join token, init election) by the managers
    only. The workers' policy grants nothing on S/managers and denies it; the IAM resources of
    each secret are NAME-?????? (Secrets Manager's 6-character ARN suffix) and NAME (calls made
    before the secret exists), and under IAM's glob rules (`*` and `?` match `/` too) no pattern
    the workers are allowed matches an ARN of S/managers. The policy documents are rendered by a
    real Terraform from the module's own statements and locals, with the data sources, the
    random suffix and the variables replaced by fixed values."""

    SUBST = {
        "data.aws_partition.current.partition": '"aws"',
        "data.aws_region.current.name": '"eu-west-1"',
        "data.aws_caller_identity.current.account_id": '"123456789012"',
        "random_id.secret_suffix.hex": '"0a1b2c3d"',
        "var.secret_name_prefix": '"swarmstrap/"',
    }
    OVERRIDE = {"cluster": '"prod"'}
    S = "swarmstrap/prod-0a1b2c3d"
    M = S + "/managers"
    ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:"
    ACTIONS = ["secretsmanager:CreateSecret", "secretsmanager:DescribeSecret", "secretsmanager:GetSecretValue",
               "secretsmanager:ListSecretVersionIds", "secretsmanager:PutSecretValue",
               "secretsmanager:TagResource", "secretsmanager:UpdateSecretVersionStage"]

    @classmethod
    def setUpClass(cls):
        cls.text = raw(MODULES["aws"])
        cls.policies = cls.render_policies(("worker_secrets", "manager_secrets"))

    @classmethod
    def local_exprs(cls, exprs) -> dict:
        """The locals the expressions use (transitively), with SUBST/OVERRIDE applied."""
        out, todo = {}, list(exprs)
        while todo:
            for name in re.findall(r"\blocal\.([A-Za-z_][A-Za-z0-9_]*)", todo.pop()):
                if name in out:
                    continue
                expr = cls.OVERRIDE.get(name) or local_value(cls.text, name)
                for ref, value in cls.SUBST.items():
                    expr = expr.replace(ref, value)
                out[name] = expr
                todo.append(expr)
        return out

    @classmethod
    def statements(cls, doc: str) -> list[dict]:
        """The static statement blocks of a policy document: attribute -> HCL expression."""
        body = data_body(cls.text, "aws_iam_policy_document", doc)
        out = []
        for m in re.finditer(r'(?<![\w"])statement\s*\{', body):
            block = body[m.end() - 1 : balanced(body, m.end() - 1)]
            attrs = {}
            for a in re.finditer(r"(?m)^\s*(sid|effect|actions|resources)\s*=\s*", block):
                start = a.end()
                end = balanced(block, start) if block[start] in "[{(" else block.index("\n", start)
                attrs[a.group(1)] = block[start:end].strip()
            out.append(attrs)
        return out

    @classmethod
    def render_policies(cls, docs) -> dict:
        """doc name -> {"Version", "Statement": [{Sid, Effect, Action, Resource}]} (the static
        statements; the KMS statement is dynamic and checked on the text)."""
        outputs, exprs = {}, []
        for doc in docs:
            items = []
            for st in cls.statements(doc):
                exprs += [st["actions"], st["resources"]]
                items.append(f'{{ Sid = {st.get("sid", "null")}, Effect = {st.get("effect", chr(34) + "Allow" + chr(34))}, '
                             f'Action = {st["actions"]}, Resource = {st["resources"]} }}')
            outputs[doc] = "[\n    " + ",\n    ".join(items) + "\n  ]"
        locals_ = cls.local_exprs(exprs)
        files = {"locals.tf": "locals {\n" + "".join(f"  {k} = {v}\n" for k, v in locals_.items()) + "}\n"}
        got = tfbin.evaluate(outputs, files)
        return {doc: {"Version": "2012-10-17", "Statement": got[doc]} for doc in docs}

    def evaluate_locals(self, *names) -> dict:
        locals_ = self.local_exprs([f"local.{n}" for n in names])
        files = {"locals.tf": "locals {\n" + "".join(f"  {k} = {v}\n" for k, v in locals_.items()) + "}\n"}
        return tfbin.evaluate({n: f"local.{n}" for n in names}, files)

    def allowed(self, doc) -> list[str]:
        return [r for st in self.policies[doc]["Statement"] if st["Effect"] == "Allow" for r in st["Resource"]]

    def denied(self, doc) -> list[str]:
        return [r for st in self.policies[doc]["Statement"] if st["Effect"] == "Deny" for r in st["Resource"]]

    def arns(self, name, n=300) -> list[str]:
        """ARNs Secrets Manager could give the secret NAME: NAME-<6 characters>, with random
        suffixes (also '/', '-' and '?' in them) and a few chosen ones."""
        import random
        import string
        rnd = random.Random(16)
        alphabet = string.ascii_letters + string.digits + "/-_+=.@?*"
        suffixes = ["AbC123", "------", "//////", "??????", "a/b-c*"] + [
            "".join(rnd.choice(alphabet) for _ in range(6)) for _ in range(n)]
        return [f"{self.ARN}{name}-{x}" for x in suffixes]

    def test_the_relay_port_is_open_between_the_nodes_only(self):
        ports = self.evaluate_locals("swarm_ports")["swarm_ports"]
        relay = [v for v in ports.values() if v["port"] == 2378]
        self.assertEqual(len(relay), 1, ports)
        self.assertEqual(relay[0]["protocol"], "tcp")
        rule = resource_body(self.text, "aws_vpc_security_group_ingress_rule", "swarm")
        self.assertIn("for_each = local.swarm_ports", rule)
        self.assertIn("cidr_ipv4         = local.vpc_cidr", rule)
        # The module's VPC, or the one given (its own range, from the aws_vpc data source).
        self.assertEqual(local_value(self.text, "vpc_cidr"),
                         "local.own_network ? var.vpc_cidr : data.aws_vpc.given[0].cidr_block")

    def test_two_roles_each_with_its_profile(self):
        text = self.text
        self.assertNotRegex(text, r'resource\s+"aws_iam_(role|instance_profile)"\s+"node"')
        for role, doc in (("manager", "manager_secrets"), ("worker", "worker_secrets")):
            with self.subTest(role):
                self.assertIn("data.aws_iam_policy_document.assume_ec2.json", resource_body(text, "aws_iam_role", role))
                self.assertIn(f"role        = aws_iam_role.{role}.name", resource_body(text, "aws_iam_instance_profile", role))
                policy = resource_body(text, "aws_iam_role_policy", role)
                self.assertIn(f"role   = aws_iam_role.{role}.id", policy)
                self.assertIn(f"policy = data.aws_iam_policy_document.{doc}.json", policy)
                ssm = resource_body(text, "aws_iam_role_policy_attachment", role)
                self.assertIn(f"role       = aws_iam_role.{role}.name", ssm)
                self.assertIn("policy/AmazonSSMManagedInstanceCore", ssm)
                instance = resource_body(text, "aws_instance", role)
                self.assertIn(f"iam_instance_profile   = aws_iam_instance_profile.{role}.name", instance)
                self.assertEqual(re.findall(r"aws_iam_instance_profile\.(\w+)", instance), [role])
                depends = re.search(r"depends_on\s*=\s*\[([^\]]*)\]", instance).group(1)
                for dep in ("aws_secretsmanager_secret.rendezvous", "aws_secretsmanager_secret.managers",
                            f"aws_iam_role_policy.{role}", f"aws_iam_role_policy_attachment.{role}"):
                    self.assertIn(dep, depends)
        # Each role and profile is used by its own kind of instance only.
        self.assertEqual(len(re.findall(r"aws_iam_instance_profile\.worker\.name", text)), 1)
        self.assertEqual(len(re.findall(r"aws_iam_instance_profile\.manager\.name", text)), 1)

    def test_exact_actions(self):
        self.assertEqual(self.evaluate_locals("secret_actions")["secret_actions"], self.ACTIONS)
        for doc, policy in self.policies.items():
            for st in policy["Statement"]:
                with self.subTest(doc=doc, sid=st["Sid"]):
                    if st["Effect"] == "Allow":
                        self.assertEqual(st["Action"], self.ACTIONS)
                    else:
                        self.assertEqual(st["Action"], ["secretsmanager:*"])

    def test_each_secret_is_its_suffixed_and_bare_arn(self):
        got = self.evaluate_locals("secret_name", "manager_secret_name", "secret_arns", "manager_secret_arns")
        self.assertEqual(got["secret_name"], self.S)
        self.assertEqual(got["manager_secret_name"], self.M)
        self.assertEqual(got["secret_arns"], [f"{self.ARN}{self.S}-??????", f"{self.ARN}{self.S}"])
        self.assertEqual(got["manager_secret_arns"], [f"{self.ARN}{self.M}-??????", f"{self.ARN}{self.M}"])
        for doc, policy in self.policies.items():
            for r in (r for st in policy["Statement"] for r in st["Resource"]):
                with self.subTest(doc=doc, resource=r):
                    self.assertNotIn("*", r)

    def test_worker_policy_grants_nothing_on_the_managers_secret_and_denies_it(self):
        worker = self.policies["worker_secrets"]
        self.assertEqual(self.allowed("worker_secrets"), [f"{self.ARN}{self.S}-??????", f"{self.ARN}{self.S}"])
        deny, = [st for st in worker["Statement"] if st["Effect"] == "Deny"]
        self.assertEqual(deny["Action"], ["secretsmanager:*"])
        self.assertEqual(deny["Resource"], [f"{self.ARN}{self.M}-??????", f"{self.ARN}{self.M}"])
        for arn in self.arns(self.M) + [self.ARN + self.M]:
            self.assertTrue(any(iam_glob_match(p, arn) for p in self.denied("worker_secrets")), arn)
        # ... and the deny does not take S from the workers.
        for arn in self.arns(self.S) + [self.ARN + self.S]:
            self.assertFalse(any(iam_glob_match(p, arn) for p in self.denied("worker_secrets")), arn)

    def test_manager_policy_grants_both_secrets(self):
        manager = self.policies["manager_secrets"]
        self.assertFalse(self.denied("manager_secrets"))
        self.assertEqual(sorted(self.allowed("manager_secrets")), sorted(
            [f"{self.ARN}{self.S}-??????", f"{self.ARN}{self.S}", f"{self.ARN}{self.M}-??????", f"{self.ARN}{self.M}"]))
        self.assertEqual(len(manager["Statement"]), 2)
        for name in (self.S, self.M):
            for arn in self.arns(name, 50) + [self.ARN + name]:
                self.assertTrue(any(iam_glob_match(p, arn) for p in self.allowed("manager_secrets")), arn)

    def test_iam_glob_rules_keep_the_workers_off_the_managers_secret(self):
        # The matcher follows IAM: `*` and `?` match `/` too.
        self.assertTrue(iam_glob_match("a*", "a/b/c"))
        self.assertTrue(iam_glob_match("a-??????", "a-b/c/d/"))
        self.assertFalse(iam_glob_match("a-??????", "a-b/c/d"))
        self.assertFalse(iam_glob_match("a", "a-abcdef"))
        self.assertTrue(iam_globs_overlap("a*", "a/managers-??????"))
        self.assertFalse(iam_globs_overlap("a-??????", "a/managers-??????"))
        # A looser grant would reach the managers' secret: why the patterns are exact.
        self.assertTrue(iam_globs_overlap(f"{self.ARN}{self.S}*", f"{self.ARN}{self.M}-??????"))
        self.assertTrue(iam_globs_overlap(f"{self.ARN}{self.S}?*", f"{self.ARN}{self.M}"))
        for p in self.allowed("worker_secrets"):
            with self.subTest(pattern=p):
                # No ARN of S/managers, whatever its 6-character suffix, and not its bare name.
                self.assertFalse(iam_globs_overlap(p, f"{self.ARN}{self.M}-??????"))
                self.assertFalse(iam_globs_overlap(p, f"{self.ARN}{self.M}"))
                for arn in self.arns(self.M) + [self.ARN + self.M]:
                    self.assertFalse(iam_glob_match(p, arn), arn)
        # ... while the workers do reach S, by its suffixed ARN and by its bare name.
        for arn in self.arns(self.S) + [self.ARN + self.S]:
            self.assertTrue(any(iam_glob_match(p, arn) for p in self.allowed("worker_secrets")), arn)

    def test_kms_statement_for_both_roles(self):
        dynamic = []
        for doc in ("worker_secrets", "manager_secrets"):
            body = data_body(self.text, "aws_iam_policy_document", doc)
            m = re.search(r'dynamic\s+"statement"\s*\{', body)
            self.assertIsNotNone(m, doc)
            block = body[m.end() - 1 : balanced(body, m.end() - 1)]
            self.assertIn('for_each = var.kms_key_id != "" ? [var.kms_key_id] : []', block)
            self.assertIn('actions   = ["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey"]', block)
            self.assertIn('variable = "kms:ViaService"', block)
            self.assertIn('values   = ["secretsmanager.${local.region}.amazonaws.com"]', block)
            dynamic.append(block)
        self.assertEqual(dynamic[0], dynamic[1])

    def test_module_creates_both_secrets_without_a_value(self):
        text = self.text
        self.assertNotIn("aws_secretsmanager_secret_version", text)
        # Only with the secrets-manager backend (the default); the Secrets Manager grants too.
        self.assertEqual(local_value(text, "secrets_manager"), 'var.backend == "secrets-manager"')
        for rtype, name in (("aws_secretsmanager_secret", "rendezvous"), ("aws_secretsmanager_secret", "managers"),
                            ("aws_iam_role_policy", "manager"), ("aws_iam_role_policy", "worker")):
            self.assertRegex(resource_body(text, rtype, name), r"\n\s*count\s*=\s*local\.secrets_manager \? 1 : 0\n")
        self.assertEqual(len(re.findall(r'resource\s+"aws_secretsmanager_secret"', text)), 2)
        self.assertIn('resource "random_id" "secret_suffix"', text)
        for name, local_name, kind in (("rendezvous", "secret_name", "rendezvous"),
                                       ("managers", "manager_secret_name", "managers")):
            with self.subTest(name):
                body = resource_body(text, "aws_secretsmanager_secret", name)
                self.assertRegex(body, rf"\n\s*name\s*=\s*local\.{local_name}\n")
                self.assertRegex(body, r'\n\s*kms_key_id\s*=\s*var\.kms_key_id != "" \? var\.kms_key_id : null\n')
                self.assertRegex(body, r"\n\s*recovery_window_in_days\s*=\s*var\.secret_recovery_window_days\n")
                tags = re.search(r"\n\s*tags\s*=\s*(.*)\n", body).group(1)
                self.assertTrue(tags.startswith("merge(local.tags, "), tags)
                self.assertIn('"swarmstrap:cluster" = local.cluster', tags)
                self.assertIn(f'"swarmstrap:secret" = "{kind}"', tags)
        # The agents get S and derive S/managers themselves.
        node_vars = local_value(text, "node_vars")
        self.assertRegex(node_vars, r'\n\s*sm_secret_name\s*=\s*local\.secrets_manager \? local\.secret_name : ""\n')
        self.assertNotIn("manager_secret", node_vars)
        outputs = declared_outputs(MODULES["aws"])
        self.assertIn("aws_secretsmanager_secret.rendezvous[0].name", scalar(outputs["secret_name"]["value"]))
        self.assertIn("aws_secretsmanager_secret.managers[0].name", scalar(outputs["manager_secret_name"]["value"]))
        for name in ("secret_name", "manager_secret_name"):
            desc = scalar(outputs[name]["description"])
            self.assertIn("terraform destroy", desc)
            self.assertNotIn("agents create", desc)
            self.assertNotIn("Delete it", desc)
        readme = read_text(os.path.join(MODULES["aws"], "README.md"))
        for phrase in ("$0.40 per secret per month", "S/managers", "secret_recovery_window_days",
                       "NAME-??????", "not billed"):
            self.assertIn(phrase, readme)

    def test_recovery_window_variable(self):
        declared = declared_variables(MODULES["aws"])["secret_recovery_window_days"]
        self.assertEqual(scalar(declared["default"]), 7)
        block = variable_block(read_text(os.path.join(MODULES["aws"], "variables.tf")), "secret_recovery_window_days")
        with tempfile.TemporaryDirectory(prefix="swarmstrap-tf-") as d:
            with open(os.path.join(d, "main.tf"), "w") as f:
                f.write(block + '\n\noutput "days" {\n  value = var.secret_recovery_window_days\n}\n')
            tfbin.run(["init", "-input=false", "-no-color"], d)
            for value, ok in ((None, True), (0, True), (7, True), (30, True), (15, True),
                              (1, False), (6, False), (31, False), (-7, False), (7.5, False)):
                with self.subTest(value=value):
                    # A var file, not -var: Terraform 1.0.3 (the offline binary) validates a -var
                    # number as the unconverted string ("7" == 7 is false); later releases
                    # convert first, and the module needs >= 1.3.
                    args = []
                    if value is not None:
                        with open(os.path.join(d, "v.tfvars"), "w") as f:
                            f.write(f"secret_recovery_window_days = {value}\n")
                        args = ["-var-file=v.tfvars"]
                    proc = tfbin.run(["apply", "-auto-approve", "-input=false", "-no-color", *args], d, check=False)
                    if ok:
                        self.assertEqual(proc.returncode, 0, proc.stderr)
                        out = json.loads(tfbin.run(["output", "-json", "-no-color"], d).stdout)
                        self.assertEqual(out["days"]["value"], 7 if value is None else value)
                    else:
                        self.assertNotEqual(proc.returncode, 0)
                        self.assertIn("The secret_recovery_window_days must be", proc.stderr.replace("\n", " "))


class ReadmeTest(unittest.TestCase):
    def usage_block(self, cloud):
        with open(os.path.join(MODULES[cloud], "README.md"), encoding="utf-8") as f:
            text = f.read()
        blocks_ = re.findall(r"```hcl\n(.*?)```", text, re.S)
        usage = [b for b in blocks_ if re.search(r'^module\s+"', b, re.M)]
        self.assertTrue(usage, "README has no ```hcl block with a module call")
        return text, usage[0]

    def test_usage_block_can_be_copied_as_is(self):
        for cloud, d in MODULES.items():
            with self.subTest(cloud):
                _, block = self.usage_block(cloud)
                doc = hcl2.loads(block)
                mods = list(blocks(doc, "module"))
                self.assertEqual(len(mods), 1)
                _, args = mods[0]
                source = scalar(args["source"])
                # Written for a root module in terraform/examples/<name>/ (or any directory two
                # levels below terraform/).
                self.assertEqual(
                    os.path.normpath(os.path.join(EXAMPLES[cloud], source)), os.path.normpath(d)
                )
                declared = declared_variables(d)
                required = {n for n, b in declared.items() if "default" not in b}
                given = {k for k in args if not k.startswith("__")} - META_ARGS
                self.assertFalse(required - given, f"required but not set: {sorted(required - given)}")
                self.assertFalse(given - set(declared), f"not module variables: {sorted(given - set(declared))}")
                # Anything else the block uses must be declared in the block itself.
                used = set(re.findall(r"\bvar\.([A-Za-z_][A-Za-z0-9_]*)", block))
                self.assertFalse(used - {n for n, _ in blocks(doc, "variable")})

    def test_inputs_and_outputs_tables_are_complete_and_current(self):
        for cloud, d in MODULES.items():
            with self.subTest(cloud):
                text, _ = self.usage_block(cloud)
                rows = set(re.findall(r"^\|\s*`?([a-z0-9_]+)`?\s*\|", text, re.M))
                for name in list(declared_variables(d)) + list(declared_outputs(d)):
                    self.assertIn(name, rows, f"{name} missing from the README tables")
                self.assertEqual(
                    readme_tables.section(text), readme_tables.tables(d),
                    f"stale tables: run python3 tests/iac/readme_tables.py --write {os.path.relpath(d, REPO)}",
                )


class ExampleTest(unittest.TestCase):
    def test_examples_call_their_module_with_all_required_variables(self):
        for cloud, d in EXAMPLES.items():
            with self.subTest(cloud):
                mods = []
                for doc in module_docs(d).values():
                    mods += list(blocks(doc, "module"))
                self.assertEqual(len(mods), 1)
                _, args = mods[0]
                self.assertEqual(scalar(args["source"]), f"../../modules/{cloud}")
                declared = declared_variables(MODULES[cloud])
                required = {n for n, b in declared.items() if "default" not in b}
                given = {k for k in args if not k.startswith("__")} - META_ARGS
                self.assertFalse(required - given)
                self.assertFalse(given - set(declared))

    def test_digitalocean_example_has_remote_state_in_spaces(self):
        text = raw(EXAMPLES["digitalocean"])
        self.assertRegex(text, r'backend\s+"s3"\s*\{')
        self.assertIn("digitaloceanspaces.com", text)

    def test_minitwit_stack(self):
        with open(os.path.join(EXAMPLES["digitalocean"], "stack.yml")) as f:
            stack = yaml.safe_load(f)
        services = stack["services"]
        lb = services["loadbalancer"]
        self.assertEqual(lb["deploy"]["replicas"], 2)
        self.assertIn("/loadbalancer:/etc/nginx/conf.d:ro", lb["volumes"])
        apps = [s for n, s in services.items() if n not in ("loadbalancer",) and s.get("deploy", {}).get("replicas", 1) > 1]
        self.assertTrue(apps, "no replicated app service")
        dbs = [s for s in services.values() if any(":/var/lib/" in str(v) for v in s.get("volumes", []))]
        self.assertEqual(len(dbs), 1)
        vol = dbs[0]["volumes"][0].split(":")[0]
        self.assertIn(vol, stack["volumes"])

    def test_the_agents_reload_the_stacks_nginx(self):
        # The container label the agent reloads by default (agent/src/config.rs) is on the
        # nginx service's containers (service `labels`, not `deploy.labels`), and the example
        # names the same service as lb_reload_service: <stack name from deploy.sh>_loadbalancer.
        config = read_text(os.path.join(REPO, "agent", "src", "config.rs"))
        label = re.search(r'DEFAULT_LB_RELOAD_LABEL: &str = "([^"]+)"', config).group(1)
        key, value = label.split("=", 1)
        with open(os.path.join(EXAMPLES["digitalocean"], "stack.yml")) as f:
            lb = yaml.safe_load(f)["services"]["loadbalancer"]
        self.assertEqual(lb["labels"], {key: value})
        self.assertNotIn("labels", lb.get("deploy", {}))
        stack = re.search(r"docker stack deploy .* -c stack\.yml (\w+)", read_text(os.path.join(EXAMPLES["digitalocean"], "deploy.sh"))).group(1)
        (_, args), = [m for doc in module_docs(EXAMPLES["digitalocean"]).values() for m in blocks(doc, "module")]
        self.assertEqual(scalar(args["lb_reload_service"]), f"{stack}_loadbalancer")
        # The node template writes both into [lb] (test_cloudinit checks the rendered keys).
        template = read_text(nodecfg.NODE_TEMPLATE)
        self.assertIn(f'reload_label = "{label}"', template)
        self.assertIn("reload_service = ${jsonencode(lb_reload_service)}", template)


def docker_stack_config_works() -> bool:
    try:
        return subprocess.run(["docker", "stack", "config", "--help"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


class StackFileTest(unittest.TestCase):
    @unittest.skipUnless(docker_stack_config_works(), "no docker CLI with `docker stack config` here")
    def test_docker_accepts_the_stack_file(self):
        proc = subprocess.run(
            ["docker", "stack", "config", "-c", os.path.join(EXAMPLES["digitalocean"], "stack.yml")],
            capture_output=True, text=True, timeout=60,
        )
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("/etc/nginx/conf.d", proc.stdout)

    def test_example_scripts_are_valid_posix_sh(self):
        for path in glob.glob(os.path.join(TF, "examples", "*", "*.sh")):
            with self.subTest(os.path.relpath(path, REPO)):
                proc = subprocess.run(["dash", "-n", path], capture_output=True, text=True)
                self.assertEqual(proc.returncode, 0, proc.stderr)


class HygieneTest(unittest.TestCase):
    def test_terraform_fmt_is_clean(self):
        proc = tfbin.run(["fmt", "-check", "-diff", "-recursive", TF], cwd=REPO, check=False)
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)

    def test_every_checkov_skip_says_why(self):
        for path in glob.glob(os.path.join(TF, "**", "*.tf"), recursive=True):
            for line in read_text(path).splitlines():
                if "checkov:skip" not in line:
                    continue
                with self.subTest(f"{os.path.relpath(path, REPO)}: {line.strip()}"):
                    self.assertRegex(line, r"#\s*checkov:skip=CKV2?_[A-Z0-9]+_\d+:\S.{15,}")

    def test_no_provider_configuration_inside_modules(self):
        for cloud, d in MODULES.items():
            with self.subTest(cloud):
                self.assertNotRegex(raw(d), r'(?m)^provider\s+"')


if __name__ == "__main__":
    unittest.main()


# ----------------------------------------------------------------------------------------------
# Scale-in, node labels, the wait-ready helper, and the READMEs' quick starts.


def unit_exec_stop_leave() -> list[str]:
    """The `swarm-agent leave ...` argv the agent unit's ExecStop runs at poweroff."""
    unit = read_text(os.path.join(REPO, "cloud-init", "swarm-agent.service"))
    m = re.search(r"exec /usr/local/bin/(swarm-agent leave [^']*)'", unit)
    assert m, "the unit's ExecStop has no swarm-agent leave"
    return m.group(1).split()


def unit_timeout_stop_secs() -> int:
    unit = read_text(os.path.join(REPO, "cloud-init", "swarm-agent.service"))
    return int(re.search(r"(?m)^TimeoutStopSec=(\d+)s$", unit).group(1))


def duration_secs(text: str) -> int:
    m = re.fullmatch(r"(\d+)([smh])", text)
    assert m, text
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600}[m.group(2)]


class ScaleInLeaveTest(unittest.TestCase):
    """A node a scale-in removes leaves the swarm first: DigitalOcean shuts droplets down before
    deleting them (graceful_shutdown) and waits long enough for the unit's ExecStop leave;
    Scaleway's delete is not a documented clean shutdown, so the module gives the leave command
    per node and the README says what is and is not guaranteed."""

    def test_digitalocean_droplets_shut_down_before_they_are_deleted(self):
        text = raw(MODULES["digitalocean"])
        for role in ("manager", "worker"):
            with self.subTest(role):
                body = resource_body(text, "digitalocean_droplet", role)
                self.assertRegex(body, r"\n\s*graceful_shutdown\s*=\s*true\n")
                timeouts = re.search(r"timeouts\s*\{([^}]*)\}", body)
                self.assertIsNotNone(timeouts, "no timeouts block: the provider's 60 s delete timeout is shorter than the leave")
                delete = re.search(r'delete\s*=\s*"([^"]+)"', timeouts.group(1)).group(1)
                # The provider waits for "off" within the delete timeout: the unit's whole stop
                # (leave included) and the rest of the shutdown must fit.
                self.assertGreaterEqual(duration_secs(delete), unit_timeout_stop_secs() + 60)
        readme = read_text(os.path.join(MODULES["digitalocean"], "README.md"))
        self.assertIn("graceful_shutdown = true", readme)
        self.assertIn("What is guaranteed and what is not", readme)

    def test_the_unit_leaves_only_within_its_stop_timeout(self):
        leave = unit_exec_stop_leave()
        self.assertEqual(leave[:2], ["swarm-agent", "leave"])
        timeout = int(leave[leave.index("--timeout-secs") + 1])
        self.assertLess(timeout, unit_timeout_stop_secs())

    def test_scaleway_gives_the_leave_command_per_node(self):
        text = raw(MODULES["scaleway"])
        self.assertEqual(json.loads(local_value(text, "leave_command")).split(), unit_exec_stop_leave())
        outputs = declared_outputs(MODULES["scaleway"])
        value = scalar(outputs["leave_commands"]["value"])
        for kind in ("manager", "worker"):
            self.assertIn(f"scaleway_instance_server.{kind} :", value)
        self.assertIn("${local.leave_command}", value)
        readme = read_text(os.path.join(MODULES["scaleway"], "README.md"))
        section = readme[readme.index("## Scale-in"):]
        section = section[: section.index("\n## ", 1)]
        for phrase in ("`terminate`", "leave_commands", "What is guaranteed and what is not", "graceful_shutdown"):
            self.assertIn(phrase, section)
        self.assertNotIn("graceful_shutdown", text)


class NodeLabelTagsTest(unittest.TestCase):
    """manager_labels/worker_labels become cloud tags in the one encoding per cloud the agent
    reads: evaluated by a real Terraform from the module's own variable blocks and locals."""

    LABELS = {"zone": "eu-1a", "disk": "ssd"}
    WANT = {
        "aws": {"swarm.label.disk": "ssd", "swarm.label.zone": "eu-1a"},
        "digitalocean": ["swarm-label:disk:ssd", "swarm-label:zone:eu-1a"],
        "scaleway": ["swarm.label.disk=ssd", "swarm.label.zone=eu-1a"],
    }
    BAD_KEYS = {"aws": ["a/b", "a b", ""], "digitalocean": ["a.b", "a:b", "a/b"], "scaleway": ["a b", "a=b", ""]}

    def run_labels(self, cloud, labels):
        variables = read_text(os.path.join(MODULES[cloud], "variables.tf"))
        expr = local_value(raw(MODULES[cloud]), "label_tags")
        with tempfile.TemporaryDirectory(prefix="swarmstrap-tf-") as d:
            with open(os.path.join(d, "main.tf"), "w") as f:
                f.write(variable_block(variables, "manager_labels") + "\n\n" + variable_block(variables, "worker_labels")
                        + f"\n\nlocals {{\n  label_tags = {expr}\n}}\n\noutput \"tags\" {{\n  value = local.label_tags\n}}\n")
            with open(os.path.join(d, "v.tfvars.json"), "w") as f:
                json.dump({"manager_labels": labels, "worker_labels": {}}, f)
            tfbin.run(["init", "-input=false", "-no-color"], d)
            proc = tfbin.run(["apply", "-auto-approve", "-input=false", "-no-color", "-var-file=v.tfvars.json"], d, check=False)
            if proc.returncode != 0:
                return proc
            return json.loads(tfbin.run(["output", "-json", "-no-color"], d).stdout)["tags"]["value"]

    def test_labels_become_the_clouds_tags(self):
        for cloud in MODULES:
            with self.subTest(cloud):
                got = self.run_labels(cloud, self.LABELS)
                self.assertNotIsInstance(got, subprocess.CompletedProcess, getattr(got, "stderr", ""))
                manager = got["manager"] if cloud == "aws" else sorted(got["manager"])
                self.assertEqual(manager, self.WANT[cloud])
                self.assertFalse(got["worker"])

    def test_node_config_names_the_modules_cloud(self):
        # The agent reads the tags above only from the cloud its [cloud] provider names (it
        # infers one only from an advertise_addr naming a cloud; Scaleway's is an IP). A real
        # Terraform renders node.yaml.tftpl with the module's own cloud_provider expression.
        others = nodecfg.node_vars(cluster="prod", coordinator_url="https://10.0.0.2:8443",
                                   coordinator_fingerprint="sha256:" + "a" * 64, join_secret="s" * 20,
                                   advertise_addr="10.0.0.11")
        del others["cloud_provider"]
        for cloud in MODULES:
            with self.subTest(cloud):
                expr = re.search(r"\n\s*cloud_provider\s*=\s*(.*)\n", local_value(raw(MODULES[cloud]), "node_vars"))
                self.assertIsNotNone(expr, f"{cloud}: node_vars has no cloud_provider")
                with tempfile.TemporaryDirectory(prefix="swarmstrap-tf-") as d:
                    with open(os.path.join(d, "others.json"), "w") as f:
                        json.dump(others, f)
                    with open(os.path.join(d, "main.tf"), "w") as f:
                        f.write('output "user_data" {\n'
                                f'  value = templatefile({json.dumps(nodecfg.NODE_TEMPLATE)}, merge(\n'
                                '    jsondecode(file("${path.module}/others.json")),\n'
                                f'    {{ cloud_provider = {expr.group(1)} }},\n'
                                '  ))\n}\n')
                    tfbin.run(["init", "-input=false", "-no-color"], d)
                    tfbin.run(["apply", "-auto-approve", "-input=false", "-no-color"], d)
                    out = json.loads(tfbin.run(["output", "-json", "-no-color"], d).stdout)
                doc = yaml.safe_load(out["user_data"]["value"])
                files = {e["path"]: e for e in doc["write_files"]}
                cfg = tomllib.loads(files[nodecfg.CONFIG_PATH]["content"])
                self.assertEqual(cfg["cloud"], {"provider": cloud})

    def test_bad_keys_are_refused_with_a_clear_message(self):
        for cloud, keys in self.BAD_KEYS.items():
            for key in keys:
                with self.subTest(cloud=cloud, key=key):
                    proc = self.run_labels(cloud, {key: "x"})
                    self.assertIsInstance(proc, subprocess.CompletedProcess)
                    self.assertIn("Every key of manager_labels must be", proc.stderr.replace("\n", " "))

    def test_nodes_carry_their_roles_tags(self):
        rtype = {"aws": "aws_instance", "digitalocean": "digitalocean_droplet", "scaleway": "scaleway_instance_server"}
        for cloud in MODULES:
            text = raw(MODULES[cloud])
            for role in ("manager", "worker"):
                with self.subTest(cloud=cloud, role=role):
                    body = resource_body(text, rtype[cloud], role)
                    self.assertIn(f'local.label_tags["{role}"]', re.search(r"\n\s*tags\s*=\s*(.*)\n", body).group(1))
                    if cloud == "aws":
                        # The agent reads the tags through the instance metadata.
                        self.assertRegex(body, r'\n\s*instance_metadata_tags\s*=\s*"enabled"\n')

    def test_aws_tag_keys_fit_the_instance_metadata(self):
        # With instance_metadata_tags, AWS refuses instance tag keys with '/' or spaces.
        block = variable_block(read_text(os.path.join(MODULES["aws"], "variables.tf")), "tags")
        with tempfile.TemporaryDirectory(prefix="swarmstrap-tf-") as d:
            with open(os.path.join(d, "main.tf"), "w") as f:
                f.write(block + '\n\noutput "t" {\n  value = var.tags\n}\n')
            tfbin.run(["init", "-input=false", "-no-color"], d)
            for tags, ok in (({"team": "a", "cost:center": "1"}, True), ({"aws/x": "a"}, False),
                             ({"my tag": "a"}, False), ({"_index": "a"}, False)):
                with self.subTest(tags=tags):
                    with open(os.path.join(d, "v.tfvars.json"), "w") as f:
                        json.dump({"tags": tags}, f)
                    proc = tfbin.run(["apply", "-auto-approve", "-input=false", "-no-color", "-var-file=v.tfvars.json"], d, check=False)
                    self.assertEqual(proc.returncode == 0, ok, proc.stderr)


def write_exe(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o755)


class WaitReadyCommandTest(unittest.TestCase):
    """Every module outputs wait_ready_command: `swarm-agent status --wait --timeout 600
    --expect-nodes N` (N = managers + workers) on the first manager, over SSH (DigitalOcean,
    Scaleway) or SSM Run Command (AWS). The AWS command, evaluated by a real Terraform from the
    module's own expressions, is run under dash against a stand-in `aws` that plays the SSM
    statuses: it exits 0 only when the command succeeded."""

    STATUS = "swarm-agent status --wait --timeout 600 --expect-nodes ${local.expected_nodes}"

    def test_every_module_has_it(self):
        for cloud, d in MODULES.items():
            with self.subTest(cloud):
                text = raw(d)
                self.assertEqual(local_value(text, "expected_nodes"), "var.manager_count + var.worker_count")
                value = scalar(declared_outputs(d)["wait_ready_command"]["value"])
                self.assertIn(self.STATUS, value)
                self.assertIn("manager[0]", value)
                if cloud != "aws":
                    self.assertRegex(value, r"^ssh root@\$\{[a-z_.]+\.manager\[0\]\.(ipv4_)?address\} swarm-agent status")

    def aws_command(self, region="eu-west-1", instance="i-0123456789abcdef0", nodes=5) -> str:
        text = raw(MODULES["aws"])
        body = read_text(os.path.join(MODULES["aws"], "outputs.tf"))
        m = re.search(r'output "wait_ready_command" \{.*?\n  value = (join\(.*?\n  \]\))\n\}', body, re.S)
        expr = m.group(1)
        invocation = local_value(text, "ssm_invocation")
        subst = {"local.region": json.dumps(region), "aws_instance.manager[0].id": json.dumps(instance),
                 "local.expected_nodes": str(nodes)}
        for ref, value in subst.items():
            invocation = invocation.replace(ref, value)
            expr = expr.replace(ref, value)
        expr = expr.replace("local.ssm_invocation", invocation)
        self.assertNotIn("local.", expr)
        return tfbin.evaluate({"cmd": expr})["cmd"]

    def run_with_fake_aws(self, cmd: str, statuses: list[str]):
        with tempfile.TemporaryDirectory() as tmp:
            state, log = os.path.join(tmp, "statuses"), os.path.join(tmp, "calls")
            with open(state, "w") as f:
                f.write("\n".join(statuses) + "\n")
            # Stand-in for the AWS CLI: send-command prints an id; the waiter succeeds only
            # for Success (as the real waiter does) and otherwise gives up; get-command-invocation
            # prints the next status (the last one repeats).
            write_exe(os.path.join(tmp, "aws"), f"""#!/bin/sh
printf '%s\\n' "$*" >> {log}
next() {{ s=$(head -n1 {state}); [ "$(wc -l < {state})" -gt 1 ] && sed -i 1d {state}; echo "$s"; }}
case "$2" in
  send-command) echo cmd-42 ;;
  wait) [ "$(next)" = Success ] ;;
  get-command-invocation)
    case "$*" in *StandardOutputContent*) echo "swarm ready: 5 nodes" ;; *) next ;; esac ;;
esac
""")
            env = dict(os.environ, PATH=f"{tmp}:{os.environ['PATH']}")
            proc = subprocess.run(["dash", "-c", cmd], env=env, capture_output=True, text=True, timeout=60)
            with open(log) as f:
                calls = f.read().splitlines()
            return proc, calls

    def test_aws_command_waits_and_reports_the_outcome(self):
        cmd = self.aws_command()
        self.assertEqual(subprocess.run(["dash", "-n", "-c", cmd], capture_output=True).returncode, 0)
        proc, calls = self.run_with_fake_aws(cmd, ["InProgress", "InProgress", "InProgress", "Success"])
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("swarm ready: 5 nodes", proc.stdout)
        send = calls[0]
        self.assertIn("ssm send-command --region eu-west-1 --instance-ids i-0123456789abcdef0 --document-name AWS-RunShellScript", send)
        params = json.loads(re.search(r"--parameters (\{.*\}) --query", send).group(1))
        self.assertEqual(params["commands"], ["/usr/local/bin/swarm-agent status --wait --timeout 600 --expect-nodes 5"])
        self.assertGreater(int(params["executionTimeout"][0]), 600)
        self.assertTrue(all("--command-id cmd-42 --instance-id i-0123456789abcdef0" in c for c in calls[1:]))
        for statuses in (["InProgress", "Failed"], ["TimedOut"], ["Cancelled"]):
            with self.subTest(statuses=statuses):
                proc, _ = self.run_with_fake_aws(cmd, statuses)
                self.assertNotEqual(proc.returncode, 0)

    def test_aws_secrets_cleanup_command(self):
        body = read_text(os.path.join(MODULES["aws"], "outputs.tf"))
        expr = re.search(r'output "secrets_cleanup_command" \{.*?\n  value\s*=\s*(.*?)\n\}', body, re.S).group(1)
        for ref, value in {"local.secrets_manager": "true", "local.region": '"eu-west-1"',
                           "local.secret_name": '"swarmstrap/prod-0a1b2c3d"',
                           "local.manager_secret_name": '"swarmstrap/prod-0a1b2c3d/managers"'}.items():
            expr = expr.replace(ref, value)
        cmd = tfbin.evaluate({"cmd": expr})["cmd"]
        arns = ["arn:aws:secretsmanager:eu-west-1:1:secret:swarmstrap/prod-0a1b2c3d-AbC123",
                "arn:aws:secretsmanager:eu-west-1:1:secret:swarmstrap/prod-0a1b2c3d/managers-XyZ789"]
        with tempfile.TemporaryDirectory() as tmp:
            log = os.path.join(tmp, "calls")
            write_exe(os.path.join(tmp, "aws"), f"""#!/bin/sh
printf '%s\\n' "$*" >> {log}
[ "$2" = list-secrets ] && printf '{arns[0]}\\t{arns[1]}\\n'
exit 0
""")
            proc = subprocess.run(["dash", "-c", cmd], env=dict(os.environ, PATH=f"{tmp}:{os.environ['PATH']}"),
                                  capture_output=True, text=True, timeout=60)
            self.assertEqual(proc.returncode, 0, proc.stderr)
            with open(log) as f:
                calls = f.read().splitlines()
        self.assertIn("--include-planned-deletion", calls[0])
        self.assertIn("Name==`swarmstrap/prod-0a1b2c3d/managers`", calls[0])
        self.assertEqual(calls[1:], [f"secretsmanager delete-secret --region eu-west-1 --force-delete-without-recovery --secret-id {a}" for a in arns])


class QuickStartTest(unittest.TestCase):
    """terraform/README.md and the module READMEs, read top to bottom, use only inputs and
    outputs that exist: every module block in an ```hcl block sets only variables of the module
    it sources (and all required ones); every `-var NAME=`, `terraform.tfvars` line and
    `terraform output NAME` in a shell block names a variable / output of the example it is run
    from (terraform/README.md: every example, the module READMEs: their cloud's)."""

    READMES = {os.path.join(TF, "README.md"): list(EXAMPLES)} | {
        os.path.join(MODULES[c], "README.md"): [c] for c in MODULES}

    def examples_for(self, readme):
        return [EXAMPLES[c] for c in self.READMES[readme]]

    def test_module_blocks_use_only_existing_inputs(self):
        seen = 0
        for readme in self.READMES:
            text = read_text(readme)
            for block in re.findall(r"```hcl\n(.*?)```", text, re.S):
                doc = hcl2.loads(block)
                for _, args in blocks(doc, "module"):
                    seen += 1
                    with self.subTest(readme=os.path.relpath(readme, REPO), block=block[:40]):
                        # Written for a root module in terraform/examples/<name>/.
                        module = os.path.normpath(os.path.join(EXAMPLES["aws"], scalar(args["source"])))
                        self.assertIn(module, MODULES.values())
                        declared = declared_variables(module)
                        given = {k for k in args if not k.startswith("__")} - META_ARGS
                        self.assertFalse(given - set(declared), f"not module variables: {sorted(given - set(declared))}")
                        required = {n for n, b in declared.items() if "default" not in b}
                        self.assertFalse(required - given)
                for _, args in blocks(doc, "output"):
                    ref = re.search(r"module\.swarm\.([a-z_]+)", scalar(args["value"]))
                    if ref:
                        # The module of the block's README (or of the module block above it).
                        mods = [m for m in MODULES.values() if readme.startswith(m)] or list(MODULES.values())
                        for m in mods:
                            self.assertIn(ref.group(1), declared_outputs(m), readme)
        self.assertGreaterEqual(seen, 4)

    def test_shell_steps_use_only_existing_variables_and_outputs(self):
        seen = 0
        for readme in self.READMES:
            text = read_text(readme)
            shell = "\n".join(re.findall(r"```sh\n(.*?)```", text, re.S))
            inline = "\n".join(re.findall(r"`([^`\n]*terraform [^`\n]*)`", text))
            for example in self.examples_for(readme):
                variables, outputs = declared_variables(example), declared_outputs(example)
                for name in re.findall(r"-var[ =]([a-z_]+)=", shell + "\n" + inline):
                    seen += 1
                    with self.subTest(readme=os.path.relpath(readme, REPO), example=example, var=name):
                        self.assertIn(name, variables)
                for name in re.findall(r"terraform output (?:-raw |-json )?([a-z_]+)", shell + "\n" + inline):
                    seen += 1
                    with self.subTest(readme=os.path.relpath(readme, REPO), example=example, output=name):
                        # The examples pass every output the READMEs run through.
                        self.assertTrue(name in outputs or all(name in declared_outputs(m) for m in MODULES.values()
                                                             if readme.startswith(m)), name)
            for heredoc in re.findall(r"cat > terraform\.tfvars <<'VARS'\n(.*?)\nVARS", shell, re.S):
                for name in re.findall(r"(?m)^([a-z_]+)\s*=", heredoc):
                    seen += 1
                    with self.subTest(readme=os.path.relpath(readme, REPO), tfvars=name):
                        self.assertIn(name, declared_variables(EXAMPLES["digitalocean"]))
        self.assertGreaterEqual(seen, 10)


class AwsBackendAndNetworkTest(unittest.TestCase):
    """The AWS module's backend and network choices: the coordinator's resources exist only with
    backend = "coordinator", the Secrets Manager ones only with "secrets-manager"; the
    coordinator sits on a fixed address inside the first node subnet (evaluated by a real
    Terraform), named by its certificate; the module's own network exists only without vpc_id."""

    COORDINATOR = [("random_password", "cluster_secret"), ("tls_private_key", "coordinator"),
                   ("tls_self_signed_cert", "coordinator"), ("local_file", "coordinator_cert_der"),
                   ("aws_security_group", "coordinator"), ("aws_vpc_security_group_ingress_rule", "coordinator_from_nodes"),
                   ("aws_vpc_security_group_egress_rule", "coordinator_all"), ("aws_iam_role", "coordinator"),
                   ("aws_iam_role_policy_attachment", "coordinator"), ("aws_iam_instance_profile", "coordinator"),
                   ("aws_instance", "coordinator")]
    NETWORK = [("aws_vpc", "this"), ("aws_default_security_group", "this"), ("aws_internet_gateway", "this"),
               ("aws_eip", "nat"), ("aws_nat_gateway", "this"), ("aws_route_table", "public"), ("aws_route_table", "private")]
    PER_AZ = [("aws_subnet", "public"), ("aws_subnet", "private"), ("aws_route_table_association", "public"),
              ("aws_route_table_association", "private")]

    @classmethod
    def setUpClass(cls):
        cls.text = raw(MODULES["aws"])

    def test_each_backend_has_only_its_resources(self):
        for rtype, name in self.COORDINATOR:
            with self.subTest(f"{rtype}.{name}"):
                self.assertRegex(resource_body(self.text, rtype, name), r"\n\s*count\s*=\s*local\.coordinator \? 1 : 0\n")
        self.assertEqual(local_value(self.text, "coordinator"), 'var.backend == "coordinator"')
        coordinator = resource_body(self.text, "aws_instance", "coordinator")
        self.assertIn("coordinator.yaml.tftpl", coordinator)
        self.assertIn("private_ip             = local.coordinator_ip", coordinator)
        self.assertIn("subnet_id              = local.node_subnet_ids[0]", coordinator)
        self.assertRegex(coordinator, r"ignore_changes\s*=\s*\[[^\]]*user_data")
        # Its role: SSM only, nothing on Secrets Manager.
        self.assertNotRegex(self.text, r'resource\s+"aws_iam_role_policy"\s+"coordinator"')
        self.assertIn("ip_addresses          = [local.coordinator_ip]",
                      resource_body(self.text, "tls_self_signed_cert", "coordinator"))
        # The coordinator's port: from the nodes' security group only.
        rule = resource_body(self.text, "aws_vpc_security_group_ingress_rule", "coordinator_from_nodes")
        self.assertIn("referenced_security_group_id = aws_security_group.nodes.id", rule)
        self.assertNotIn("cidr_ipv4", rule)
        node_vars = local_value(self.text, "node_vars")
        self.assertIn("backend                 = var.backend", node_vars)
        self.assertIn("coordinator_url         = local.coordinator ? local.coordinator_url : \"\"", node_vars)
        self.assertIn("join_secret             = local.coordinator ? random_password.cluster_secret[0].result : \"\"", node_vars)

    def test_backend_variable_refuses_anything_else(self):
        block = variable_block(read_text(os.path.join(MODULES["aws"], "variables.tf")), "backend")
        with tempfile.TemporaryDirectory(prefix="swarmstrap-tf-") as d:
            with open(os.path.join(d, "main.tf"), "w") as f:
                f.write(block + '\n\noutput "b" {\n  value = var.backend\n}\n')
            tfbin.run(["init", "-input=false", "-no-color"], d)
            for value, ok in (("secrets-manager", True), ("coordinator", True), ("consul", False)):
                with self.subTest(value):
                    proc = tfbin.run(["apply", "-auto-approve", "-input=false", "-no-color", f"-var=backend={value}"], d, check=False)
                    self.assertEqual(proc.returncode == 0, ok, proc.stderr)
                    if not ok:
                        self.assertIn("The backend must be", proc.stderr.replace("\n", " "))

    def test_coordinator_address_is_inside_the_first_node_subnet(self):
        import ipaddress
        subnet = re.search(r"cidr_block\s*=\s*(.*)\n", resource_body(self.text, "aws_subnet", "private")).group(1)
        for vpc_cidr, override in (("10.20.0.0/16", ""), ("10.0.0.0/22", ""), ("10.20.0.0/16", "10.20.128.77")):
            with self.subTest(vpc_cidr=vpc_cidr, override=override):
                subst = {"var.vpc_cidr": json.dumps(vpc_cidr), "var.coordinator_private_ip": json.dumps(override),
                         "local.own_network": "true", "count.index": "0"}
                exprs = {"ip": local_value(self.text, "coordinator_ip"), "subnet": subnet}
                exprs["ip"] = exprs["ip"].replace("local.node_subnet_cidr", f"({local_value(self.text, 'node_subnet_cidr')})")
                for name in exprs:
                    for ref, value in subst.items():
                        exprs[name] = exprs[name].replace(ref, value)
                    exprs[name] = re.sub(r"data\.aws_subnet\.given\[0\]\.cidr_block", '"unused"', exprs[name])
                got = tfbin.evaluate(exprs)
                self.assertIn(ipaddress.ip_address(got["ip"]), ipaddress.ip_network(got["subnet"]))
                self.assertEqual(got["ip"], override or str(ipaddress.ip_network(got["subnet"])[10]))

    def test_own_network_only_without_vpc_id(self):
        self.assertEqual(local_value(self.text, "own_network"), 'var.vpc_id == ""')
        for rtype, name in self.NETWORK:
            with self.subTest(f"{rtype}.{name}"):
                self.assertRegex(resource_body(self.text, rtype, name), r"\n\s*count\s*=\s*local\.own_network \? 1 : 0\n")
        for rtype, name in self.PER_AZ:
            with self.subTest(f"{rtype}.{name}"):
                self.assertRegex(resource_body(self.text, rtype, name), r"\n\s*count\s*=\s*local\.own_network \? var\.az_count : 0\n")
        self.assertEqual(local_value(self.text, "node_subnet_ids"), "local.own_network ? aws_subnet.private[*].id : var.subnet_ids")
        for kind in ("manager", "worker"):
            self.assertIn("subnet_id              = local.node_subnet_ids[count.index % length(local.node_subnet_ids)]",
                          resource_body(self.text, "aws_instance", kind))
        nodes_sg = resource_body(self.text, "aws_security_group", "nodes")
        self.assertIn("vpc_id      = local.vpc_id", nodes_sg)
        self.assertIn("Set vpc_id with subnet_ids", nodes_sg)
        self.assertIn("Every subnet in subnet_ids must belong to vpc_id.", nodes_sg)
        self.assertNotRegex(self.text, r"aws_vpc\.this\.id|aws_subnet\.(public|private)\[\*\]\.id(?!\s*:)")
