"""cloud-init/swarmstrap-install.sh, run for real under dash and busybox sh: distribution
detection, the sha256 check against a real HTTP download on loopback, retry with a deadline."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import shutil
import subprocess
import tempfile
import threading
import time
import unittest

SCRIPT = os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", "..", "cloud-init", "swarmstrap-install.sh")
)
SHELLS = [s for s in (shutil.which("dash"), shutil.which("busybox") and "busybox-sh") if s]

OS_RELEASES = {
    "ubuntu2204": 'NAME="Ubuntu"\nID=ubuntu\nID_LIKE=debian\nVERSION_ID="22.04"\n',
    "ubuntu2404": 'NAME="Ubuntu"\nID=ubuntu\nID_LIKE=debian\nVERSION_ID="24.04"\n',
    "debian12": 'NAME="Debian GNU/Linux"\nID=debian\nVERSION_ID="12"\n',
    "al2023": 'NAME="Amazon Linux"\nID="amzn"\nID_LIKE="fedora"\nVERSION_ID="2023"\n',
    "al2": 'NAME="Amazon Linux"\nID="amzn"\nID_LIKE="centos rhel fedora"\nVERSION_ID="2"\n',
    "centos": 'NAME="CentOS Stream"\nID="centos"\nID_LIKE="rhel fedora"\nVERSION_ID="9"\n',
}


def shell_argv(shell: str) -> list[str]:
    return ["busybox", "sh"] if shell == "busybox-sh" else [shell]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class InstallScriptTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.serve_dir = tempfile.TemporaryDirectory()
        cls.payload = b"#!/bin/sh\necho fake swarm-agent\n" * 100
        with open(os.path.join(cls.serve_dir.name, "swarm-agent"), "wb") as f:
            f.write(cls.payload)
        cls.sha = hashlib.sha256(cls.payload).hexdigest()
        handler = functools.partial(_Quiet, directory=cls.serve_dir.name)
        cls.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        cls.url = f"http://127.0.0.1:{cls.httpd.server_address[1]}/swarm-agent"
        cls.thread = threading.Thread(target=cls.httpd.serve_forever, daemon=True)
        cls.thread.start()

    @classmethod
    def tearDownClass(cls):
        cls.httpd.shutdown()
        cls.httpd.server_close()
        cls.serve_dir.cleanup()

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.root = os.path.join(self.tmp.name, "root")
        os.makedirs(self.root)

    def tearDown(self):
        self.tmp.cleanup()

    def run_script(self, *args, shell=None, os_release="ubuntu2404", timeout=60):
        rel = os.path.join(self.tmp.name, "os-release")
        with open(rel, "w") as f:
            f.write(OS_RELEASES[os_release])
        env = dict(os.environ)
        env.update(
            SWARMSTRAP_ROOT=self.root,
            SWARMSTRAP_OS_RELEASE=rel,
            SWARMSTRAP_PKG_DRY_RUN="1",
            SWARMSTRAP_NO_SYSTEMD="1",
        )
        argv = shell_argv(shell or SHELLS[0]) + [SCRIPT, *args]
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)

    def install(self, sha=None, docker="distro", **kw):
        return self.run_script(
            "install", "--name", "swarm-agent", "--url", self.url, "--sha256", sha or self.sha,
            "--docker", docker, "--start", "swarm-agent.service", **kw,
        )

    def test_syntax(self):
        for shell in SHELLS:
            with self.subTest(shell):
                proc = subprocess.run(shell_argv(shell) + ["-n", SCRIPT], capture_output=True, text=True)
                self.assertEqual(proc.returncode, 0, proc.stderr)

    def test_good_download_is_installed_and_started(self):
        for shell in SHELLS:
            with self.subTest(shell):
                dest = os.path.join(self.root, "usr/local/bin/swarm-agent")
                if os.path.exists(dest):
                    os.unlink(dest)
                proc = self.install(shell=shell)
                self.assertEqual(proc.returncode, 0, proc.stderr)
                with open(dest, "rb") as f:
                    self.assertEqual(f.read(), self.payload)
                self.assertEqual(os.stat(dest).st_mode & 0o777, 0o755)
                self.assertIn("systemctl: enable --now docker.service", proc.stdout)
                self.assertIn("systemctl: enable --now swarm-agent.service", proc.stdout)
                self.assertEqual(os.listdir(os.path.dirname(dest)), ["swarm-agent"])

    def test_sha256_mismatch_fails_hard_and_installs_nothing(self):
        for shell in SHELLS:
            with self.subTest(shell):
                proc = self.install(sha="ab" * 32, shell=shell)
                self.assertEqual(proc.returncode, 1)
                self.assertIn("sha256 mismatch", proc.stderr)
                self.assertIn(self.sha, proc.stderr)  # says what it got
                bindir = os.path.join(self.root, "usr/local/bin")
                self.assertEqual(os.listdir(bindir), [])  # no binary, no temp file left
                self.assertNotIn("enable --now swarm-agent.service", proc.stdout)

    def test_second_run_keeps_the_verified_binary(self):
        self.assertEqual(self.install().returncode, 0)
        proc = self.install()
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("already the wanted build", proc.stderr)

    def test_docker_packages_per_distribution(self):
        want = {
            "ubuntu2204": ["pkg: apt_get update",
                           "pkg: apt_get install --no-install-recommends docker.io ca-certificates curl"],
            "ubuntu2404": ["pkg: apt_get install --no-install-recommends docker.io ca-certificates curl"],
            "debian12": ["pkg: apt_get install --no-install-recommends docker.io ca-certificates curl"],
            "al2023": ["pkg: dnf install -y docker"],
        }
        for rel, lines in want.items():
            with self.subTest(rel):
                proc = self.install(os_release=rel)
                self.assertEqual(proc.returncode, 0, proc.stderr)
                for line in lines:
                    self.assertIn(line, proc.stdout.splitlines())

    def test_pinned_docker_version(self):
        proc = self.install(docker="24.0.7-0ubuntu4", os_release="ubuntu2404")
        self.assertIn("docker.io=24.0.7-0ubuntu4", proc.stdout)
        proc = self.install(docker="25.0.6-1.amzn2023.0.2", os_release="al2023")
        self.assertIn("pkg: dnf install -y docker-25.0.6-1.amzn2023.0.2", proc.stdout)

    def test_no_docker_for_the_coordinator(self):
        proc = self.install(docker="none", os_release="centos")  # no detection needed
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertNotIn("pkg:", proc.stdout)
        self.assertNotIn("docker.service", proc.stdout)

    def test_unsupported_distributions_are_refused(self):
        for rel, words in (("al2", "Amazon Linux 2023"), ("centos", "not supported")):
            with self.subTest(rel):
                proc = self.install(os_release=rel)
                self.assertEqual(proc.returncode, 1)
                self.assertIn(words, proc.stderr)
                self.assertFalse(os.path.exists(os.path.join(self.root, "usr/local/bin/swarm-agent")))

    def test_bad_arguments(self):
        cases = [
            (["install", "--name", "swarm-agent", "--url", self.url, "--sha256", "xyz"], "64 hex"),
            (["install", "--name", "evil", "--url", self.url, "--sha256", self.sha], "--name must be"),
            (["install", "--name", "swarm-agent", "--url", "ftp://x", "--sha256", self.sha], "http(s) URL"),
            (["install", "--bogus"], "unknown option"),
            (["frobnicate"], "usage"),
        ]
        for args, words in cases:
            with self.subTest(args=args):
                proc = self.run_script(*args)
                self.assertEqual(proc.returncode, 1)
                self.assertIn(words, proc.stderr)

    def test_retry_succeeds_after_failures(self):
        counter = os.path.join(self.tmp.name, "n")
        # Fails twice, then succeeds.
        cmd = f'n=$(cat {counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {counter}; [ $n -ge 3 ]'
        proc = self.run_script("retry", "60", "sh", "-c", cmd)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        with open(counter) as f:
            self.assertEqual(f.read().strip(), "3")
        self.assertEqual(proc.stderr.count("retrying in"), 2)

    def test_retry_gives_up_at_the_deadline(self):
        start = time.monotonic()
        proc = self.run_script("retry", "3", "sh", "-c", "exit 7")
        elapsed = time.monotonic() - start
        self.assertEqual(proc.returncode, 7)
        self.assertIn("giving up", proc.stderr)
        self.assertLess(elapsed, 10)


if __name__ == "__main__":
    unittest.main()
