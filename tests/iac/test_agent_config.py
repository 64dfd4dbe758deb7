"""The real swarm-agent accepts the config.toml the node template writes.

Runs `swarm-agent status --json --config <rendered config.toml>` for every rendered scenario. The
agent reads and validates the whole file first (unknown keys are an error there), exits 2 on
a bad config, and 1 when the config is fine but the node has not joined (which is all it can
see here). Network: only loopback. The coordinator URL is a closed loopback port, Secrets
Manager gets a loopback endpoint and dummy credentials (so the AWS SDK never asks the instance
metadata service), and advertise_addr is an IP. `status` reads no cloud metadata, so the
rendered `[cloud] provider` (aws, digitalocean, scaleway) is only parsed and validated.

The binary: $SWARM_AGENT_BIN, else the static release build CI makes before these tests, else
any local build; skipped (and shown as skipped) when there is none.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import nodecfg  # noqa: E402
from test_cloudinit import NODE_SCENARIOS  # noqa: E402

# The static (musl) release build first: what scripts/build-static.sh makes and releases ship.
CANDIDATES = [
    "target/x86_64-unknown-linux-musl/release/swarm-agent",
    "target/release/swarm-agent",
    "target/debug/swarm-agent",
]


def agent_binary() -> str | None:
    env = os.environ.get("SWARM_AGENT_BIN")
    if env:
        return env
    for rel in CANDIDATES:
        path = os.path.join(nodecfg.REPO, rel)
        if os.access(path, os.X_OK):
            return path
    return None


BIN = agent_binary()


# scripts/test.sh (CI) sets SWARMSTRAP_REQUIRE_BINARIES=1: there the binaries must exist.
if not (BIN) and os.environ.get("SWARMSTRAP_REQUIRE_BINARIES") == "1":
    raise SystemExit("the release binaries are missing: run `bash scripts/build-static.sh` first")


@unittest.skipUnless(BIN, "no swarm-agent binary built (set SWARM_AGENT_BIN)")
class AgentAcceptsRenderedConfigTest(unittest.TestCase):
    def status(self, tmp: str, config_text: str, secret: str | None):
        config = os.path.join(tmp, "config.toml")
        with open(config, "w") as f:
            f.write(config_text)
        os.chmod(config, 0o600)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": tmp,
            "SWARM_AGENT_STATE_DIR": os.path.join(tmp, "state"),
            "SWARM_AGENT_DOCKER_HOST": f"unix://{tmp}/no-docker.sock",
            "AWS_ACCESS_KEY_ID": "AKIDLOCALTESTONLY",
            "AWS_SECRET_ACCESS_KEY": "local-test-only",
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        if secret is not None:
            path = os.path.join(tmp, "join-secret")
            with open(path, "w") as f:
                f.write(secret)
            os.chmod(path, 0o600)
            env["SWARM_AGENT_JOIN_SECRET_FILE"] = path
        else:
            # Never whatever /etc/swarm-agent/join-secret this machine may have.
            env["SWARM_AGENT_JOIN_SECRET_FILE"] = os.path.join(tmp, "no-join-secret")
        return subprocess.run(
            [BIN, "status", "--json", "--config", config], env=env, capture_output=True, text=True, timeout=120
        )

    def scenario(self, name: str) -> dict:
        sc = dict(NODE_SCENARIOS[name])
        sc["advertise_addr"] = "198.18.0.11"
        if sc["backend"] == "coordinator":
            sc["coordinator_url"] = "https://127.0.0.1:9"
        else:
            sc["sm_endpoint_url"] = "http://127.0.0.1:9"
        return sc

    def test_every_rendered_config_is_accepted(self):
        for name in NODE_SCENARIOS:
            with self.subTest(name), tempfile.TemporaryDirectory() as tmp:
                sc = self.scenario(name)
                files = nodecfg.write_files(nodecfg.render_node(nodecfg.node_vars(**sc)))
                secret = files.get(nodecfg.JOIN_SECRET_PATH, {}).get("content")
                proc = self.status(tmp, files[nodecfg.CONFIG_PATH]["content"], secret)
                self.assertEqual(proc.returncode, 1, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
                status = json.loads(proc.stdout)
                self.assertEqual(status["cluster"], sc["cluster"])
                self.assertEqual(status["backend"]["kind"], sc["backend"])

    def test_secrets_manager_backend_needs_no_join_secret(self):
        # The secrets-manager config (AWS) has no join_secret_file and cloud-init writes no
        # join secret: the agent must not ask for one with that backend.
        for name, sc in NODE_SCENARIOS.items():
            if sc["backend"] != "secrets-manager":
                continue
            with tempfile.TemporaryDirectory() as tmp:
                files = nodecfg.write_files(nodecfg.render_node(nodecfg.node_vars(**self.scenario(name))))
                self.assertNotIn(nodecfg.JOIN_SECRET_PATH, files)
                proc = self.status(tmp, files[nodecfg.CONFIG_PATH]["content"], None)
                error = json.loads(proc.stdout)["backend"]["error"] or ""
                self.assertNotIn("join secret", error)

    def test_a_bad_config_is_rejected(self):
        # The check above means something only if the agent does reject bad files.
        with tempfile.TemporaryDirectory() as tmp:
            sc = self.scenario("lab")
            files = nodecfg.write_files(nodecfg.render_node(nodecfg.node_vars(**sc)))
            text = files[nodecfg.CONFIG_PATH]["content"].replace("lease_ttl_secs", "lease_tll_secs")
            proc = self.status(tmp, text, files[nodecfg.JOIN_SECRET_PATH]["content"])
            self.assertEqual(proc.returncode, 2, proc.stdout + proc.stderr)
            self.assertIn("lease_tll_secs", proc.stderr)

    def test_an_unknown_cloud_provider_is_rejected(self):
        # The rendered [cloud] provider is validated too, not ignored.
        with tempfile.TemporaryDirectory() as tmp:
            sc = self.scenario("scaleway_worker")
            files = nodecfg.write_files(nodecfg.render_node(nodecfg.node_vars(**sc)))
            text = files[nodecfg.CONFIG_PATH]["content"]
            self.assertIn('provider = "scaleway"', text)
            proc = self.status(tmp, text.replace('provider = "scaleway"', 'provider = "azure"'),
                               files[nodecfg.JOIN_SECRET_PATH]["content"])
            self.assertEqual(proc.returncode, 2, proc.stdout + proc.stderr)
            self.assertIn("azure", proc.stderr)


if __name__ == "__main__":
    unittest.main()
