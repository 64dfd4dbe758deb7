#!/usr/bin/env bash
# Builds, checks and signs release VERSION into dist/VERSION/ (release/README.md is the layout):
# static musl swarm-agent and swarm-coordinator for x86_64 and aarch64, the installer, a
# CycloneDX SBOM, SHA256SUMS and its minisign signature.
#
#   SWARMSTRAP_SIGNING_KEY_FILE=/path/to/minisign.key bash scripts/release.sh 0.2.0
#   SWARMSTRAP_SIGNING_KEY="$(cat minisign.key)"      bash scripts/release.sh 0.2.0
#
# The secret key (unencrypted, `minisign -G -W`) comes from a file or the environment, never
# argv. SWARMSTRAP_SIGNING_PUBKEY_FILE names the public key to verify with (default: derived
# from the secret key). SWARMSTRAP_DIST_DIR overrides the output directory (the tests use it).
set -euo pipefail
cd "$(dirname "$0")/.."

# Size limits of the stripped binaries (MiB): the installer downloads them at first boot. The
# agent's went from 12 to 13 MiB with the etcd backend (etcd/README.md "Binary size").
MAX_AGENT=$((13 * 1024 * 1024))
MAX_COORDINATOR=$((8 * 1024 * 1024))

die() { echo "release: $*" >&2; exit 1; }
step_start=0
step() { step_start=$(date +%s); echo "== release: $*" >&2; }
step_done() { echo "   ($(( $(date +%s) - step_start )) s)" >&2; }

[ $# -eq 1 ] || die "usage: scripts/release.sh VERSION (semver without a leading v, e.g. 0.2.0)"
VERSION=$1
[[ "$VERSION" =~ ^[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$ ]] \
  || die "VERSION '$VERSION' is not semver without a leading v (e.g. 0.2.0)"

for tool in minisign sha256sum file python3 cargo; do
  command -v "$tool" >/dev/null || die "$tool is missing (bash scripts/setup.sh installs it)"
done

# The signing key: checked before the long build so a missing key fails in a second.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [ -n "${SWARMSTRAP_SIGNING_KEY_FILE:-}" ]; then
  [ -r "$SWARMSTRAP_SIGNING_KEY_FILE" ] || die "SWARMSTRAP_SIGNING_KEY_FILE=$SWARMSTRAP_SIGNING_KEY_FILE is not a readable file"
  seckey=$SWARMSTRAP_SIGNING_KEY_FILE
elif [ -n "${SWARMSTRAP_SIGNING_KEY:-}" ]; then
  seckey=$tmp/minisign.key
  (umask 077 && printf '%s\n' "$SWARMSTRAP_SIGNING_KEY" >"$seckey")
else
  die "no signing key: set SWARMSTRAP_SIGNING_KEY_FILE (a file) or SWARMSTRAP_SIGNING_KEY (its contents) to an unencrypted minisign secret key (minisign -G -W); releases are never unsigned"
fi
if [ -n "${SWARMSTRAP_SIGNING_PUBKEY_FILE:-}" ]; then
  pubkey=$SWARMSTRAP_SIGNING_PUBKEY_FILE
else
  pubkey=$tmp/minisign.pub
  minisign -R -s "$seckey" -p "$pubkey" >/dev/null 2>&1 \
    || die "cannot derive the public key from the secret key (is it an unencrypted minisign secret key?)"
fi

dist=${SWARMSTRAP_DIST_DIR:-dist/$VERSION}
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')

step "build x86_64 (musl, SWARMSTRAP_VERSION=$VERSION)"
SWARMSTRAP_VERSION=$VERSION bash scripts/build-static.sh x86_64
step_done
step "build aarch64 (musl, SWARMSTRAP_VERSION=$VERSION)"
SWARMSTRAP_VERSION=$VERSION bash scripts/build-static.sh aarch64
step_done

step "assemble $dist"
rm -rf "$dist"
mkdir -p "$dist"
for arch in x86_64 aarch64; do
  for bin in swarm-agent swarm-coordinator; do
    install -m 0755 "$target_dir/$arch-unknown-linux-musl/release/$bin" "$dist/$bin-$VERSION-$arch"
  done
done
install -m 0755 cloud-init/swarmstrap-install.sh "$dist/swarmstrap-install.sh"
python3 scripts/sbom.py "$VERSION" >"$dist/swarmstrap-$VERSION.cdx.json"
step_done

step "check the binaries (static, size, version)"
failed=0
for arch in x86_64 aarch64; do
  for bin in swarm-agent swarm-coordinator; do
    f=$dist/$bin-$VERSION-$arch
    desc=$(file -b "$f")
    echo "$(basename "$f"): $desc"
    case "$desc" in
      *"statically linked"* | *"static-pie linked"*) ;;
      *) echo "release: $f is not statically linked" >&2; failed=1 ;;
    esac
    case "$arch" in x86_64) want="x86-64" ;; aarch64) want="ARM aarch64" ;; esac
    [[ "$desc" == *"$want"* ]] || { echo "release: $f is not an $arch binary" >&2; failed=1; }
    size=$(stat -c %s "$f")
    max=$MAX_AGENT
    [ "$bin" = swarm-coordinator ] && max=$MAX_COORDINATOR
    if [ "$size" -gt "$max" ]; then
      echo "release: $f is $size bytes, over its limit of $max bytes" >&2
      failed=1
    fi
  done
done
out=$("$dist/swarm-agent-$VERSION-x86_64" --version)
[[ "$out" == *"$VERSION"* ]] || { echo "release: swarm-agent --version says '$out', not $VERSION" >&2; failed=1; }
out=$("$dist/swarm-coordinator-$VERSION-x86_64" --version)
[[ "$out" == *"$VERSION"* ]] || { echo "release: swarm-coordinator --version says '$out', not $VERSION" >&2; failed=1; }
[ "$failed" = 0 ] || die "the binaries failed their checks (above)"
step_done

step "SHA256SUMS and its signature"
(
  cd "$dist"
  sha256sum -- swarm-agent-"$VERSION"-x86_64 swarm-agent-"$VERSION"-aarch64 \
    swarm-coordinator-"$VERSION"-x86_64 swarm-coordinator-"$VERSION"-aarch64 \
    swarmstrap-install.sh "swarmstrap-$VERSION.cdx.json" >SHA256SUMS
)
# Prehashed (ED) signature, the minisign default; the trusted comment binds the version.
minisign -S -s "$seckey" -m "$dist/SHA256SUMS" -x "$dist/SHA256SUMS.minisig" \
  -t "swarmstrap $VERSION SHA256SUMS" </dev/null >/dev/null
step_done

step "verify what was written"
minisign -V -q -p "$pubkey" -m "$dist/SHA256SUMS" -x "$dist/SHA256SUMS.minisig" \
  || die "the signature of $dist/SHA256SUMS does not verify with $pubkey"
grep -qx "trusted comment: swarmstrap $VERSION SHA256SUMS" "$dist/SHA256SUMS.minisig" \
  || die "the trusted comment of $dist/SHA256SUMS.minisig is not 'swarmstrap $VERSION SHA256SUMS'"
(cd "$dist" && sha256sum --quiet -c SHA256SUMS) || die "sha256sum -c failed in $dist"
step_done

echo "== release $VERSION in $dist:" >&2
(cd "$dist" && ls -l --time-style=+ -- *) | awk 'NR>0 {printf "%12d  %6.2f MiB  %s\n", $5, $5/1048576, $NF}'
