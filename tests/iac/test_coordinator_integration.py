"""The coordinator VM's user-data, played out with the real binaries on loopback.

From the rendered coordinator.yaml.tftpl: write its files (TLS key in the SEC1 "EC PRIVATE KEY"
form hashicorp/tls produces, certificate, cluster secret), run its `cluster create` command and
start the server exactly as swarm-coordinator.service does (only paths and the listen address
moved into a temp dir / 127.0.0.1). Then the pin computed the way the Terraform modules compute
it must equal the coordinator's own fingerprint, and a swarm-agent with the rendered node
config.toml must reach the coordinator through that pin (and be refused with a wrong pin).
With adopt_running_swarm, the rendered `cluster create` holds the cluster awaiting adoption
(`cluster show`), and `cluster allow-init` lifts the hold; without it, no hold.

Binaries: $SWARM_COORDINATOR_BIN / $SWARM_AGENT_BIN, else builds under target*/; skipped
without them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import unittest

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import nodecfg  # noqa: E402
from test_agent_config import BIN as AGENT_BIN  # noqa: E402
from test_units import COORDINATOR_UNIT, parse_unit  # noqa: E402


def coordinator_binary() -> str | None:
    env = os.environ.get("SWARM_COORDINATOR_BIN")
    if env:
        return env
    for rel in (
        "target/x86_64-unknown-linux-musl/release/swarm-coordinator",
        "target/release/swarm-coordinator",
        "target/debug/swarm-coordinator",
    ):
        path = os.path.join(nodecfg.REPO, rel)
        if os.access(path, os.X_OK):
            return path
    return None


COORD_BIN = coordinator_binary()
SECRET = "Zx8kP2qLm9Vt4Rw7Yb1Nc6Hd3Fg5Js0AqWe"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, deadline_s: float = 30.0) -> None:
    """Capped exponential backoff with jitter until the port accepts, the server dies, or
    the deadline passes."""
    deadline = time.monotonic() + deadline_s
    delay = 0.02
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"swarm-coordinator exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"swarm-coordinator did not listen on {port} within {deadline_s}s")
        time.sleep(delay + random.uniform(0, delay))
        delay = min(delay * 2, 0.5)


def terraform_pin(cert_pem: str) -> str:
    """What the modules compute: the PEM body (base64 of the DER; the expression is checked
    with a real Terraform in test_terraform.py), decoded and hashed as local_file does."""
    body = "".join(line.strip() for line in cert_pem.split("\n") if line.strip() and not line.startswith("-----"))
    return "sha256:" + hashlib.sha256(base64.b64decode(body)).hexdigest()


# scripts/test.sh (CI) sets SWARMSTRAP_REQUIRE_BINARIES=1: there the binaries must exist.
if not (COORD_BIN and AGENT_BIN) and os.environ.get("SWARMSTRAP_REQUIRE_BINARIES") == "1":
    raise SystemExit("the release binaries are missing: run `bash scripts/build-static.sh` first")


@unittest.skipUnless(COORD_BIN and AGENT_BIN, "swarm-coordinator and swarm-agent builds are needed")
class CoordinatorUserDataTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.root = self.tmp.name
        self.server = None

    def tearDown(self):
        if self.server and self.server.poll() is None:
            self.server.terminate()
            try:
                self.server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()
        self.tmp.cleanup()

    def moved(self, arg: str) -> str:
        for src, dst in (
            ("/usr/local/bin/swarm-coordinator", COORD_BIN),
            ("/etc/swarm-coordinator", os.path.join(self.root, "etc")),
            ("/var/lib/swarm-coordinator", os.path.join(self.root, "data")),
            ("/root/swarmstrap-operator-credential", os.path.join(self.root, "operator-credential")),
            # systemd's LoadCredential= copy of the key (the unit's %d): here the file itself.
            ("%d/tls.key", os.path.join(self.root, "etc", "tls.key")),
        ):
            if arg.startswith(src):
                return dst + arg[len(src):]
        return arg

    def test_user_data_brings_up_a_pinned_coordinator(self):
        key, crt = os.path.join(self.root, "k.pem"), os.path.join(self.root, "c.pem")
        subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key],
                       check=True, capture_output=True)
        subprocess.run(["openssl", "req", "-x509", "-key", key, "-out", crt, "-days", "3650",
                        "-subj", "/CN=swarm-coordinator/O=swarmstrap", "-addext", "subjectAltName=IP:127.0.0.1"],
                       check=True, capture_output=True)
        with open(key) as f:
            key_pem = f.read()
        self.assertIn("BEGIN EC PRIVATE KEY", key_pem)  # the form hashicorp/tls gives for ECDSA
        with open(crt) as f:
            cert_pem = f.read()

        user_data = nodecfg.render_coordinator(nodecfg.coordinator_vars(
            cluster="itest", target_managers=3, cluster_secret=SECRET, tls_cert_pem=cert_pem, tls_key_pem=key_pem,
        ))
        for path, entry in nodecfg.write_files(user_data).items():
            if not path.startswith("/etc/swarm-coordinator/"):
                continue
            dest = self.moved(path)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with open(dest, "w") as f:
                f.write(entry["content"])
            os.chmod(dest, int(entry["permissions"], 8))

        runcmd = yaml.safe_load(user_data)["runcmd"]
        create = [self.moved(a) for a in runcmd[2]]
        self.assertEqual(create[1:3], ["cluster", "create"])
        proc = subprocess.run(create, capture_output=True, text=True, timeout=60)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertNotIn(SECRET, proc.stdout + proc.stderr)
        # The operator credential went to a 0600 file, not to the (logged) output.
        op = os.path.join(self.root, "operator-credential")
        self.assertEqual(os.stat(op).st_mode & 0o777, 0o600)
        with open(op) as f:
            operator = f.read().strip()
        self.assertGreaterEqual(len(operator), 32)
        self.assertNotIn(operator, proc.stdout + proc.stderr)

        port = free_port()
        serve = [self.moved(a) for a in shlex.split(parse_unit(COORDINATOR_UNIT)["Service"]["ExecStart"])]
        serve[serve.index("--listen") + 1] = f"127.0.0.1:{port}"
        # The admin API's default loopback port may be taken by a parallel run.
        serve += ["--admin-listen", f"127.0.0.1:{free_port()}"]
        self.server_log = open(os.path.join(self.root, "server.log"), "w")
        self.addCleanup(self.server_log.close)
        self.server = subprocess.Popen(serve, stdout=subprocess.DEVNULL, stderr=self.server_log)
        wait_for_port(port, self.server)

        pin = terraform_pin(cert_pem)
        own = subprocess.run([COORD_BIN, "fingerprint", "--tls-cert", os.path.join(self.root, "etc", "tls.crt")],
                             capture_output=True, text=True, timeout=30)
        self.assertEqual(own.returncode, 0, own.stderr)
        self.assertEqual(own.stdout.strip(), pin)

        good = self.agent_status(port, pin)
        self.assertEqual(good.returncode, 1, good.stderr)  # reachable backend, but no engine here
        backend = json.loads(good.stdout)["backend"]
        self.assertEqual((backend["reachable"], backend["phase"], backend["error"]), (True, "open", None), backend)

        wrong = self.agent_status(port, "sha256:" + "00" * 32)
        backend = json.loads(wrong.stdout)["backend"]
        self.assertFalse(backend["reachable"])
        self.assertIsNone(backend["phase"])
        self.assertIn("fingerprint", backend["error"])

    def test_adopt_running_swarm_creates_the_cluster_awaiting_adoption(self):
        # The rendered `cluster create` of a replacement coordinator (adopt_running_swarm = true)
        # holds init claims until the running swarm adopts the cluster; a new cluster's (false)
        # does not. `cluster allow-init` lifts the hold.
        for adopt in (False, True):
            with self.subTest(adopt=adopt):
                root = tempfile.mkdtemp(dir=self.root)
                user_data = nodecfg.render_coordinator(nodecfg.coordinator_vars(
                    cluster="itest", target_managers=3, cluster_secret=SECRET,
                    tls_cert_pem="unused", tls_key_pem="unused", adopt_running_swarm=adopt,
                ))
                secret_path = "/etc/swarm-coordinator/cluster.secret"
                moved = {"/usr/local/bin/swarm-coordinator": COORD_BIN,
                         secret_path: os.path.join(root, "cluster.secret"),
                         "/var/lib/swarm-coordinator": os.path.join(root, "data"),
                         "/root/swarmstrap-operator-credential": os.path.join(root, "operator-credential")}
                with open(moved[secret_path], "w") as f:
                    f.write(nodecfg.write_files(user_data)[secret_path]["content"])
                os.chmod(moved[secret_path], 0o600)
                create = [moved.get(a, a) for a in yaml.safe_load(user_data)["runcmd"][2]]
                self.assertEqual("--adopt" in create, adopt)
                proc = subprocess.run(create, capture_output=True, text=True, timeout=60)
                self.assertEqual(proc.returncode, 0, proc.stderr)
                self.assertNotIn(SECRET, proc.stdout + proc.stderr)
                data = ["--data-dir", moved["/var/lib/swarm-coordinator"]]
                self.assertIs(self.cluster_json("show", "itest", *data)["awaiting_adoption"], adopt)
                if adopt:
                    self.assertIn("allow-init", proc.stderr)
                    self.assertIs(self.cluster_json("allow-init", "itest", *data)["awaiting_adoption"], False)
                    self.assertIs(self.cluster_json("show", "itest", *data)["awaiting_adoption"], False)

    def cluster_json(self, *args) -> dict:
        proc = subprocess.run([COORD_BIN, "cluster", *args], capture_output=True, text=True, timeout=60)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        return json.loads(proc.stdout)

    def agent_status(self, port: int, pin: str) -> subprocess.CompletedProcess:
        d = tempfile.mkdtemp(dir=self.root)
        files = nodecfg.write_files(nodecfg.render_node(nodecfg.node_vars(
            cluster="itest", backend="coordinator", target_managers=3, advertise_addr="127.0.0.1",
            coordinator_url=f"https://127.0.0.1:{port}", coordinator_fingerprint=pin, join_secret=SECRET,
        )))
        paths = {}
        for name, src in (("config.toml", nodecfg.CONFIG_PATH), ("join-secret", nodecfg.JOIN_SECRET_PATH)):
            paths[name] = os.path.join(d, name)
            with open(paths[name], "w") as f:
                f.write(files[src]["content"])
            os.chmod(paths[name], 0o600)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": d,
            "SWARM_AGENT_STATE_DIR": os.path.join(d, "state"),
            "SWARM_AGENT_DOCKER_HOST": f"unix://{d}/no-docker.sock",
            "SWARM_AGENT_JOIN_SECRET_FILE": paths["join-secret"],
        }
        return subprocess.run([AGENT_BIN, "status", "--json", "--config", paths["config.toml"]], env=env,
                              capture_output=True, text=True, timeout=120)


if __name__ == "__main__":
    unittest.main()
