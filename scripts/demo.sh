#!/usr/bin/env bash
# The main job: a local demo cluster. Installs what is missing, builds the static binaries,
# starts a 5-host lab (real Docker engines in network namespaces) with a coordinator and an
# agent per host, prints every host's `swarm-agent status` and `docker node ls`, and tears
# everything down on exit. Run as root. Extra arguments go to the demo (e.g. --hold).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build-static.sh
exec cargo run --release --locked -p swarmstrap-lab --bin demo -- "$@"
