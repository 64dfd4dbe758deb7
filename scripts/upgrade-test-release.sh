#!/usr/bin/env bash
# A second, signed build of swarm-agent for the rolling-upgrade lab test
# (tests/tests/release.rs): the current source stamped with another version, laid out as a
# release (release/README.md) with only the x86_64 agent, SHA256SUMS signed by a throwaway key.
#
#   bash scripts/upgrade-test-release.sh [OUT_DIR [VERSION]]   # default target/upgrade-release, <workspace>-lab.1
#
# Prints the two variables the test reads. It builds into target/ like scripts/build-static.sh
# (a relink: only the stamped crates change), so run it BEFORE build-static.sh, which stamps the
# lab build back to the workspace version.
set -euo pipefail
cd "$(dirname "$0")/.."

out=${1:-target/upgrade-release}
ws=$(cargo metadata --format-version 1 --no-deps \
  | python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "swarm-agent"))')
version=${2:-$ws-lab.1}
[ "$version" != "$ws" ] || { echo "upgrade-test-release: the version must differ from the workspace's ($ws)" >&2; exit 2; }

rm -rf "$out"
mkdir -p "$out"
SWARMSTRAP_VERSION=$version bash scripts/build-static.sh x86_64
file="swarm-agent-$version-x86_64"
cp target/x86_64-unknown-linux-musl/release/swarm-agent "$out/$file"
"$out/$file" --version | grep -qx "swarm-agent $version" \
  || { echo "upgrade-test-release: $out/$file does not report $version" >&2; exit 1; }
# A throwaway, unencrypted key: the project's secret key never reaches a test.
minisign -G -W -p "$out/test.pub" -s "$out/test.key" >/dev/null
(cd "$out" && sha256sum "$file" >SHA256SUMS)
minisign -S -s "$out/test.key" -m "$out/SHA256SUMS" -t "swarmstrap $version SHA256SUMS" >/dev/null
rm -f "$out/test.key"
minisign -V -q -p "$out/test.pub" -m "$out/SHA256SUMS"
out_abs=$(cd "$out" && pwd)
echo "SWARMSTRAP_UPGRADE_RELEASE_DIR=$out_abs"
echo "SWARMSTRAP_UPGRADE_PUBLIC_KEY_FILE=$out_abs/test.pub"
