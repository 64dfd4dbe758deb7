"""The systemd units in cloud-init/: systemd-analyze accepts them, they have the ordering and
restart policy we rely on, and the agent's ExecStop runs `swarm-agent leave` only when the
machine powers off (run for real with a stand-in systemctl and agent)."""

from __future__ import annotations

import configparser
import os
import re
import shlex
import shutil
import stat
import subprocess
import tempfile
import unittest

CLOUD_INIT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "cloud-init"))
AGENT_UNIT = os.path.join(CLOUD_INIT, "swarm-agent.service")
COORDINATOR_UNIT = os.path.join(CLOUD_INIT, "swarm-coordinator.service")
METADATA_UNIT = os.path.join(CLOUD_INIT, "swarmstrap-metadata-block.service")


def parse_unit(path) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    cp.optionxform = str
    with open(path) as f:
        cp.read_file(f)
    return cp


def write_exe(path, text):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


class UnitsTest(unittest.TestCase):
    def test_agent_unit_ordering_and_restart(self):
        u = parse_unit(AGENT_UNIT)
        self.assertEqual(set(u["Unit"]["Wants"].split()), {"docker.service", "network-online.target"})
        self.assertEqual(set(u["Unit"]["After"].split()), {"docker.service", "network-online.target", "swarmstrap-metadata-block.service"})
        self.assertEqual(u["Unit"]["Requires"], "swarmstrap-metadata-block.service")
        s = u["Service"]
        self.assertEqual(s["ExecStart"], "/usr/local/bin/swarm-agent run --config /etc/swarm-agent/config.toml")
        # The agent tells systemd when the node is in the swarm (READY=1) and its phase
        # (STATUS=...); joining takes as long as the cluster needs, so no start timeout (and
        # cloud-init starts the unit with --no-block).
        self.assertEqual(s["Type"], "notify")
        self.assertEqual(s["NotifyAccess"], "main")
        self.assertEqual(s["TimeoutStartSec"], "infinity")
        self.assertEqual(s["Restart"], "on-failure")
        self.assertRegex(s["RestartSec"], r"^\d+s$")
        # A configuration error (the agent's EXIT_CONFIG) is not restarted forever.
        cli = open(os.path.join(CLOUD_INIT, "..", "agent", "src", "cli", "mod.rs"), encoding="utf-8").read()
        code = re.search(r"pub const EXIT_CONFIG: u8 = (\d+);", cli).group(1)
        self.assertEqual(s["RestartPreventExitStatus"], code)
        self.assertTrue(s["ExecStop"].startswith("-"), "a failing leave must not fail the stop")
        self.assertIn("/usr/local/bin/swarm-agent leave --config /etc/swarm-agent/config.toml", s["ExecStop"])
        self.assertEqual(u["Install"]["WantedBy"], "multi-user.target")

    def test_metadata_block_unit_runs_before_docker_on_every_boot(self):
        u = parse_unit(METADATA_UNIT)
        self.assertIn("docker.service", u["Unit"]["Before"].split())
        self.assertIn("swarm-agent.service", u["Unit"]["Before"].split())
        self.assertEqual(u["Service"]["Type"], "oneshot")
        self.assertEqual(u["Service"]["ExecStart"], "/usr/local/lib/swarmstrap/swarmstrap-metadata-block.sh")
        self.assertIn("multi-user.target", u["Install"]["WantedBy"].split())

    def test_coordinator_unit(self):
        u = parse_unit(COORDINATOR_UNIT)
        argv = shlex.split(u["Service"]["ExecStart"])
        self.assertEqual(argv[:2], ["/usr/local/bin/swarm-coordinator", "serve"])
        opts = dict(zip(argv[2::2], argv[3::2]))
        self.assertEqual(opts, {
            "--listen": "0.0.0.0:8443",
            "--data-dir": "/var/lib/swarm-coordinator",
            "--tls-cert": "/etc/swarm-coordinator/tls.crt",
            "--tls-key": "%d/tls.key",
        })
        svc = u["Service"]
        self.assertEqual(svc["Restart"], "on-failure")
        # Least privilege (issue 14): its own user, no capabilities, a file limit above the
        # server's connection cap, the key read from systemd's private copy.
        self.assertEqual(svc["DynamicUser"], "yes")
        self.assertEqual(svc["CapabilityBoundingSet"], "")
        self.assertEqual(svc["LoadCredential"], "tls.key:/etc/swarm-coordinator/tls.key")
        self.assertEqual(svc["ProtectSystem"], "strict")
        self.assertGreater(int(svc["LimitNOFILE"]), 16384 + 64)

    @unittest.skipUnless(shutil.which("systemd-analyze"), "systemd-analyze is not installed")
    def test_systemd_accepts_the_units(self):
        with tempfile.TemporaryDirectory() as tmp:
            fake = os.path.join(tmp, "bin")
            write_exe(fake, "#!/bin/sh\n")
            # verify insists that the binaries exist: point them at a stand-in. Every unit is
            # in the directory first: the agent unit requires the metadata block unit.
            for unit in (AGENT_UNIT, COORDINATOR_UNIT, METADATA_UNIT):
                with open(unit) as f:
                    text = f.read()
                text = (text.replace("/usr/local/bin/swarm-agent", fake)
                        .replace("/usr/local/bin/swarm-coordinator", fake)
                        .replace("/usr/local/lib/swarmstrap/swarmstrap-metadata-block.sh", fake))
                with open(os.path.join(tmp, os.path.basename(unit)), "w") as f:
                    f.write(text)
            for unit in (AGENT_UNIT, COORDINATOR_UNIT, METADATA_UNIT):
                with self.subTest(os.path.basename(unit)):
                    path = os.path.join(tmp, os.path.basename(unit))
                    proc = subprocess.run(["systemd-analyze", "verify", path], capture_output=True, text=True, timeout=60)
                    self.assertEqual(proc.returncode, 0, proc.stderr)
                    self.assertEqual(proc.stderr.strip(), "", "systemd warns about the unit")

    def test_leave_runs_only_at_poweroff(self):
        exec_stop = parse_unit(AGENT_UNIT)["Service"]["ExecStop"]
        argv = shlex.split(exec_stop[1:])
        self.assertEqual(argv[:2], ["/bin/sh", "-c"])
        cases = {
            "poweroff": ("  4711 poweroff.target start waiting\n   88 systemd-poweroff.service start waiting\n", True),
            "halt": ("12 halt.target start waiting\n", True),
            "reboot": ("  4711 reboot.target start waiting\n", False),
            "restart or crash": ("", False),
            "other jobs": ("  17 apt-daily.service start running\n", False),
        }
        with tempfile.TemporaryDirectory() as tmp:
            record = os.path.join(tmp, "leave-called")
            agent = os.path.join(tmp, "swarm-agent")
            write_exe(agent, f'#!/bin/sh\necho "$@" > {record}\nexit 3\n')
            script = argv[2].replace("/usr/local/bin/swarm-agent", agent)
            for name, (jobs, leaves) in cases.items():
                with self.subTest(name):
                    if os.path.exists(record):
                        os.unlink(record)
                    with open(os.path.join(tmp, "jobs"), "w") as f:
                        f.write(jobs)
                    write_exe(os.path.join(tmp, "systemctl"), f"#!/bin/sh\n[ \"$1\" = list-jobs ] && cat {tmp}/jobs\n")
                    env = dict(os.environ, PATH=f"{tmp}:{os.environ['PATH']}")
                    proc = subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, text=True)
                    self.assertEqual(os.path.exists(record), leaves)
                    if leaves:
                        with open(record) as f:
                            self.assertEqual(f.read().split(), ["leave", "--config", "/etc/swarm-agent/config.toml", "--timeout-secs", "90"])
                        self.assertEqual(proc.returncode, 3)  # the "-" prefix makes systemd ignore it
                    else:
                        self.assertEqual(proc.returncode, 0)


if __name__ == "__main__":
    unittest.main()
