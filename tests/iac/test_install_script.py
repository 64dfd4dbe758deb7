"""cloud-init/swarmstrap-install.sh, run for real under dash and busybox sh: distribution
detection, the sha256 check against a real HTTP download on loopback, retry with a deadline,
and installs and upgrades from a signed release: a throwaway release (fake binaries named as
release/README.md says, SHA256SUMS signed by `minisign` with a throwaway key) served over
loopback HTTP, good and tampered."""

from __future__ import annotations

import functools
import hashlib
import re
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

    def run_script(self, *args, shell=None, os_release="ubuntu2404", timeout=60, env_extra=None):
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
        env.update(env_extra or {})
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
            (["upgrade", "--bogus", "x"], "unknown option"),
            (["install", "--name"], "needs a value"),
            (["install", "--name", "swarm-agent"], "--version is required"),
            (["install", "--name", "swarm-agent", "--version", "0.2.0", "--url", self.url,
              "--sha256", self.sha], "not both"),
            (["install", "--name", "swarm-agent", "--version", "v0.2.0"], "without the leading v"),
            (["install", "--name", "swarm-agent", "--version", "latest"], "not a release version"),
            (["upgrade", "--name", "evil", "--version", "0.2.0"], "--name must be"),
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


REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
VERSION = "0.2.0"
NEXT = "0.3.0"
ARCHES = ("x86_64", "aarch64")
NAMES = ("swarm-agent", "swarm-coordinator")


def minisign_keypair(d: str) -> tuple[str, str, str]:
    """A throwaway minisign key pair without a password: (public key file, secret key file, key
    line)."""
    os.makedirs(d)
    pub, sec = os.path.join(d, "minisign.pub"), os.path.join(d, "minisign.key")
    subprocess.run(["minisign", "-G", "-W", "-p", pub, "-s", sec], check=True, capture_output=True)
    with open(pub) as f:
        return pub, sec, f.read().splitlines()[1]


def binary(name: str, version: str, arch: str) -> bytes:
    return f"#!/bin/sh\necho '{name} {version} {arch}'\n".encode() * 50


def write_release(d: str, version: str, files: dict[str, bytes], secret_key: str, comment_version=None):
    """A release directory as release/README.md lays it out: the files, SHA256SUMS, and its
    minisign signature whose trusted comment names comment_version (default: version)."""
    os.makedirs(d)
    for fname, data in files.items():
        with open(os.path.join(d, fname), "wb") as f:
            f.write(data)
    with open(os.path.join(d, "SHA256SUMS"), "w") as f:
        for fname in sorted(files):
            f.write(f"{hashlib.sha256(files[fname]).hexdigest()}  {fname}\n")
    subprocess.run(
        ["minisign", "-S", "-s", secret_key, "-m", os.path.join(d, "SHA256SUMS"),
         "-t", f"swarmstrap {comment_version or version} SHA256SUMS"],
        check=True, capture_output=True,
    )


# The real binaries (for the completions and man page they generate): the static release build
# first, as releases ship it. scripts/test.sh (CI) builds them and sets
# SWARMSTRAP_REQUIRE_BINARIES=1, so there the test below cannot be skipped.
def real_binary(name: str) -> str | None:
    for rel in (f"target/x86_64-unknown-linux-musl/release/{name}", f"target/release/{name}",
                f"target/debug/{name}"):
        path = os.path.join(REPO, rel)
        if os.access(path, os.X_OK):
            return path
    return None


REAL_BINARIES = {n: real_binary(n) for n in NAMES}


def release_files(version: str) -> dict[str, bytes]:
    return {f"{n}-{version}-{a}": binary(n, version, a) for n in NAMES for a in ARCHES}


@unittest.skipUnless(shutil.which("minisign") and shutil.which("openssl"), "needs minisign and openssl")
class SignedReleaseTest(unittest.TestCase):
    """install/upgrade --version: every check of release/README.md ("Signature") can refuse, and a
    refusal installs nothing. Each mirror below is a base URL on one loopback HTTP server."""

    @classmethod
    def setUpClass(cls):
        cls.serve_dir = tempfile.TemporaryDirectory()
        top = cls.serve_dir.name
        keys = os.path.join(top, "keys")  # served too, harmless: never fetched
        cls.pub, cls.sec, cls.key = minisign_keypair(os.path.join(keys, "trusted"))
        _, other_sec, _ = minisign_keypair(os.path.join(keys, "other"))

        good = release_files(VERSION)
        write_release(os.path.join(top, "good", f"v{VERSION}"), VERSION, good, cls.sec)
        write_release(os.path.join(top, "good", f"v{NEXT}"), NEXT, release_files(NEXT), cls.sec)

        # The signed SHA256SUMS, but the x86_64 agent replaced on the mirror.
        d = os.path.join(top, "tampered-binary", f"v{VERSION}")
        write_release(d, VERSION, good, cls.sec)
        with open(os.path.join(d, f"swarm-agent-{VERSION}-x86_64"), "ab") as f:
            f.write(b"echo evil\n")

        # The binary replaced and its SHA256SUMS line changed to match, after signing.
        d = os.path.join(top, "tampered-sums", f"v{VERSION}")
        write_release(d, VERSION, good, cls.sec)
        evil = good[f"swarm-agent-{VERSION}-x86_64"] + b"echo evil\n"
        with open(os.path.join(d, f"swarm-agent-{VERSION}-x86_64"), "wb") as f:
            f.write(evil)
        with open(os.path.join(d, "SHA256SUMS")) as f:
            sums = f.read()
        sums = re.sub(rf"^[0-9a-f]{{64}}(  swarm-agent-{VERSION}-x86_64)$",
                      lambda m: hashlib.sha256(evil).hexdigest() + m.group(1), sums, flags=re.M)
        with open(os.path.join(d, "SHA256SUMS"), "w") as f:
            f.write(sums)

        # A well-formed release signed by another key.
        write_release(os.path.join(top, "other-key", f"v{VERSION}"), VERSION, good, other_sec)

        # Replay: a correctly signed SHA256SUMS of another version (0.1.0) served as 0.2.0. Its
        # file names match this version, so only the trusted comment can tell.
        old = {f: data + b"# old\n" for f, data in good.items()}
        write_release(os.path.join(top, "replay", f"v{VERSION}"), VERSION, old, cls.sec, comment_version="0.1.0")

        # The same replay with its trusted comment edited to say 0.2.0: the global signature.
        d = os.path.join(top, "edited-comment", f"v{VERSION}")
        write_release(d, VERSION, old, cls.sec, comment_version="0.1.0")
        sig = os.path.join(d, "SHA256SUMS.minisig")
        with open(sig) as f:
            text = f.read()
        with open(sig, "w") as f:
            f.write(text.replace("trusted comment: swarmstrap 0.1.0 SHA256SUMS",
                                 f"trusted comment: swarmstrap {VERSION} SHA256SUMS"))

        # A mirror that forgot the signature.
        d = os.path.join(top, "unsigned", f"v{VERSION}")
        write_release(d, VERSION, good, cls.sec)
        os.unlink(os.path.join(d, "SHA256SUMS.minisig"))

        # The real binaries as this release's x86_64 files.
        real = {}
        for name, path in REAL_BINARIES.items():
            if path:
                with open(path, "rb") as f:
                    real[f"{name}-{VERSION}-x86_64"] = f.read()
        write_release(os.path.join(top, "real", f"v{VERSION}"), VERSION, real, cls.sec)

        cls.good = good
        handler = functools.partial(_Quiet, directory=top)
        cls.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        cls.base = f"http://127.0.0.1:{cls.httpd.server_address[1]}"
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
        self.scratch = os.path.join(self.tmp.name, "scratch")  # the script's TMPDIR
        os.makedirs(self.root)
        os.makedirs(self.scratch)
        self.bindir = os.path.join(self.root, "usr/local/bin")

    def tearDown(self):
        self.tmp.cleanup()

    def run_script(self, *args, arch="x86_64", shell=None, allow_http=True):
        env = dict(os.environ)
        env.update(
            SWARMSTRAP_ROOT=self.root,
            SWARMSTRAP_PKG_DRY_RUN="1",
            SWARMSTRAP_NO_SYSTEMD="1",
            SWARMSTRAP_UNAME_M=arch,
            TMPDIR=self.scratch,
        )
        if allow_http:
            env["SWARMSTRAP_ALLOW_HTTP"] = "1"
        argv = shell_argv(shell or SHELLS[0]) + [SCRIPT, *args]
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)

    def install(self, mirror="good", name="swarm-agent", version=VERSION, key=None, **kw):
        args = ["install", "--name", name, "--version", version, "--base-url", f"{self.base}/{mirror}",
                "--docker", "none", "--start", f"{name}.service"]
        if key != "default":
            args += ["--public-key", key or self.key]
        return self.run_script(*args, **kw)

    def upgrade(self, version, mirror="good", *extra, **kw):
        return self.run_script("upgrade", "--version", version, "--base-url", f"{self.base}/{mirror}",
                               "--public-key", self.key, *extra, **kw)

    def installed(self, name="swarm-agent") -> bytes:
        with open(os.path.join(self.bindir, name), "rb") as f:
            return f.read()

    def assert_refused(self, proc, *words):
        self.assertEqual(proc.returncode, 1, proc.stdout + proc.stderr)
        for w in words:
            self.assertIn(w, proc.stderr)
        self.assertIn("Nothing was installed", proc.stderr)
        self.assertNotIn("enable --now", proc.stdout)
        self.assertNotIn("restart", proc.stdout)
        self.assertEqual(os.listdir(self.scratch), [], "temporary files left behind")

    def assert_nothing_installed(self):
        self.assertEqual(os.listdir(self.bindir) if os.path.isdir(self.bindir) else [], [])

    def test_install_picks_the_file_of_this_architecture(self):
        for shell in SHELLS:
            for uname_m, arch in (("x86_64", "x86_64"), ("aarch64", "aarch64"), ("arm64", "aarch64")):
                for name in NAMES:
                    with self.subTest(shell=shell, uname_m=uname_m, name=name):
                        proc = self.install(name=name, arch=uname_m, shell=shell)
                        self.assertEqual(proc.returncode, 0, proc.stderr)
                        self.assertEqual(self.installed(name), self.good[f"{name}-{VERSION}-{arch}"])
                        self.assertEqual(os.stat(os.path.join(self.bindir, name)).st_mode & 0o777, 0o755)
                        self.assertIn(f"systemctl: enable --now {name}.service", proc.stdout)
                        self.assertIn("signature by key", proc.stderr)
                        self.assertIn(f"/v{VERSION}/{name}-{VERSION}-{arch}", proc.stderr)
                        self.assertEqual(os.listdir(self.bindir), [name])
                        self.assertEqual(os.listdir(self.scratch), [])
                        os.unlink(os.path.join(self.bindir, name))

    def doc_paths(self, name: str) -> dict[str, str]:
        share = os.path.join(self.root, "usr/share")
        return {
            "man": os.path.join(share, "man/man1", f"{name}.1"),
            "bash": os.path.join(share, "bash-completion/completions", name),
            "zsh": os.path.join(share, "zsh/site-functions", f"_{name}"),
            "fish": os.path.join(share, "fish/vendor_completions.d", f"{name}.fish"),
        }

    def render_man(self, path: str) -> str:
        """The man page as a reader sees it: `man -l` (else groff), plain ASCII."""
        env = dict(os.environ, LC_ALL="C", MANPAGER="cat", PAGER="cat", MANWIDTH="100")
        if shutil.which("man"):
            argv = ["man", "-l", path]
        elif shutil.which("groff"):
            argv = ["groff", "-man", "-Tascii", path]
        else:
            with open(path) as f:
                text = f.read()
            self.assertRegex(text, r"(?m)^\.TH ")
            return text
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        return proc.stdout

    def test_install_writes_completions_and_man_page(self):
        if not all(REAL_BINARIES.values()):
            if os.environ.get("SWARMSTRAP_REQUIRE_BINARIES") == "1":
                self.fail(f"the binaries are missing ({REAL_BINARIES}): run `bash scripts/build-static.sh`")
            self.skipTest("no swarm-agent / swarm-coordinator binary built")
        for shell in SHELLS:
            for name in NAMES:
                with self.subTest(shell=shell, name=name):
                    shutil.rmtree(self.root)
                    os.makedirs(self.root)
                    proc = self.install("real", name=name, shell=shell)
                    self.assertEqual(proc.returncode, 0, proc.stderr)
                    self.assertIn(f"installed the man page and shell completions of {name}", proc.stderr)
                    paths = self.doc_paths(name)
                    for kind, path in paths.items():
                        self.assertTrue(os.path.isfile(path), f"{kind}: {path} missing")
                        self.assertEqual(os.stat(path).st_mode & 0o777, 0o644, path)
                    page = self.render_man(paths["man"])
                    self.assertIn(name, page)
                    self.assertIn("--log-format", page)
                    self.assertIn("serve" if name == "swarm-coordinator" else "status", page)
                    # bash loads the completion and registers it for the command.
                    proc = subprocess.run(
                        ["bash", "-c", f'source "{paths["bash"]}" && complete -p {name}'],
                        capture_output=True, text=True, timeout=30,
                    )
                    self.assertEqual(proc.returncode, 0, proc.stderr)
                    self.assertIn(name, proc.stdout)
                    with open(paths["zsh"]) as f:
                        self.assertTrue(f.readline().startswith(f"#compdef {name}"))
                    with open(paths["fish"]) as f:
                        self.assertIn(f"complete -c {name}", f.read())
                    self.assertEqual(os.listdir(self.scratch), [])
                    self.assertEqual(os.listdir(self.bindir), [name])

    def test_a_build_without_docs_installs_none(self):
        # The fake binaries print no man page: installed all the same, without docs.
        proc = self.install()
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("prints no man page", proc.stderr)
        for path in self.doc_paths("swarm-agent").values():
            self.assertFalse(os.path.exists(path), path)
        self.assertEqual(os.listdir(os.path.join(self.root, "usr/share/man/man1")), [])

    def test_second_install_keeps_the_verified_binary(self):
        self.assertEqual(self.install().returncode, 0)
        proc = self.install()
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("already the wanted build", proc.stderr)

    def test_refusals_name_the_failed_check_and_install_nothing(self):
        cases = {
            "tampered-binary": ("sha256 check failed", "does not match its line in the signed SHA256SUMS"),
            "tampered-sums": ("signature check failed", "altered or corrupted"),
            "other-key": ("key id check failed", "not by the trusted key"),
            "replay": ("version check failed", "swarmstrap 0.1.0 SHA256SUMS", "another release"),
            "edited-comment": ("trusted comment signature check failed",),
            "unsigned": ("download check failed", "SHA256SUMS.minisig"),
            "no-such-mirror": ("download check failed", f"/no-such-mirror/v{VERSION}/SHA256SUMS"),
        }
        for shell in SHELLS:
            for mirror, words in cases.items():
                with self.subTest(shell=shell, mirror=mirror):
                    shutil.rmtree(self.bindir, ignore_errors=True)  # each case on its own
                    proc = self.install(mirror, shell=shell)
                    self.assert_refused(proc, *words)
                    self.assert_nothing_installed()

    def test_unknown_architecture_is_refused(self):
        for uname_m in ("riscv64", "armv7l", "i686"):
            with self.subTest(uname_m):
                proc = self.install(arch=uname_m)
                self.assert_refused(proc, "architecture check failed", f"'{uname_m}'", "x86_64 and aarch64")
                self.assert_nothing_installed()

    def test_the_project_key_is_the_default(self):
        # release/minisign.pub's key line and the contract's base URL are baked in.
        with open(os.path.join(REPO, "release", "minisign.pub")) as f:
            project_key = f.read().splitlines()[1]
        with open(SCRIPT) as f:
            text = f.read()
        self.assertIn(f'DEFAULT_PUBLIC_KEY="{project_key}"', text)
        self.assertIn('DEFAULT_BASE_URL="https://github.com/swarmstrap/swarmstrap/releases/download"', text)
        # A release signed by any other key (here the test's) is refused without --public-key.
        proc = self.install(key="default")
        with open(os.path.join(REPO, "release", "minisign.pub")) as f:
            project_id = f.readline().split()[-1]  # "untrusted comment: minisign public key ID"
        self.assert_refused(proc, "key id check failed", f"trusted key {project_id}")
        self.assert_nothing_installed()

    def test_bad_public_key_is_refused(self):
        for bad in ("not-base64!", base64_of(b"Ed" + b"\0" * 10)):
            with self.subTest(bad):
                self.assert_refused(self.install(key=bad), "public key check failed")
                self.assert_nothing_installed()

    def test_plain_http_base_url_needs_the_test_seam(self):
        proc = self.install(allow_http=False)
        self.assertEqual(proc.returncode, 1)
        self.assertIn("--base-url must be an https:// URL", proc.stderr)
        self.assert_nothing_installed()

    def test_upgrade_replaces_atomically_and_restarts(self):
        self.assertEqual(self.install().returncode, 0)
        dest = os.path.join(self.bindir, "swarm-agent")
        before = os.stat(dest)
        with open(dest, "rb") as running:  # a process holding the old binary open
            proc = self.upgrade(NEXT)
            self.assertEqual(proc.returncode, 0, proc.stderr)
            self.assertEqual(running.read(), self.good[f"swarm-agent-{VERSION}-x86_64"])
        self.assertEqual(self.installed(), binary("swarm-agent", NEXT, "x86_64"))
        after = os.stat(dest)
        self.assertNotEqual(before.st_ino, after.st_ino, "replaced by rename, not rewritten in place")
        self.assertEqual(after.st_mode & 0o777, 0o755)
        self.assertIn("systemctl: restart swarm-agent.service", proc.stdout.splitlines())
        self.assertEqual(os.listdir(self.bindir), ["swarm-agent"])
        self.assertEqual(os.listdir(self.scratch), [])

        # Again at the same version: nothing changes, no restart.
        proc = self.upgrade(NEXT)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn(f"already {NEXT}; nothing to do", proc.stderr)
        self.assertNotIn("restart", proc.stdout)
        self.assertEqual(os.stat(dest).st_ino, after.st_ino)

    def test_upgrade_of_the_coordinator_restarts_its_unit(self):
        self.assertEqual(self.install(name="swarm-coordinator", arch="arm64").returncode, 0)
        proc = self.upgrade(NEXT, "good", "--name", "swarm-coordinator", arch="arm64")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(self.installed("swarm-coordinator"), binary("swarm-coordinator", NEXT, "aarch64"))
        self.assertIn("systemctl: restart swarm-coordinator.service", proc.stdout.splitlines())

    def test_refused_upgrade_keeps_the_running_binary(self):
        # NEXT installed; the bad mirrors hold VERSION only.
        self.assertEqual(self.install(version=NEXT).returncode, 0)
        running = binary("swarm-agent", NEXT, "x86_64")
        for mirror in ("tampered-binary", "tampered-sums", "replay", "other-key", "edited-comment"):
            with self.subTest(mirror):
                proc = self.upgrade(VERSION, mirror, "--unit", "swarm-agent.service")
                self.assert_refused(proc, "check failed")
                self.assertEqual(self.installed(), running)
                self.assertEqual(os.listdir(self.bindir), ["swarm-agent"])
        proc = self.upgrade(VERSION, "good", arch="sparc64")
        self.assert_refused(proc, "architecture check failed")
        self.assertEqual(self.installed(), running)

    def test_upgrade_needs_an_installed_binary(self):
        proc = self.upgrade(NEXT)
        self.assertEqual(proc.returncode, 1)
        self.assertIn("is not installed", proc.stderr)
        self.assert_nothing_installed()

    def test_upgrade_reads_the_agent_configs_release_table(self):
        # What the node template writes (the agent's `swarm-agent upgrade` reads the same keys).
        self.assertEqual(self.install().returncode, 0)
        cfg = os.path.join(self.root, "etc/swarm-agent/config.toml")
        os.makedirs(os.path.dirname(cfg))
        with open(cfg, "w") as f:
            f.write(f'cluster = "prod"\n\n[lb]\nenabled = true\n\n[release]\n'
                    f'base_url = "{self.base}/good"\npublic_key = "{self.key}"\n')
        proc = self.run_script("upgrade", "--version", NEXT)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn(f"{self.base}/good/v{NEXT}/SHA256SUMS", proc.stderr)
        self.assertEqual(self.installed(), binary("swarm-agent", NEXT, "x86_64"))
        # The command line wins over the config.
        proc = self.run_script("upgrade", "--version", VERSION, "--base-url", f"{self.base}/replay")
        self.assert_refused(proc, "version check failed")


def base64_of(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


if __name__ == "__main__":
    unittest.main()
