#!/usr/bin/env bash
# Builds the static (static-pie, glibc) release binaries of swarm-agent and swarm-coordinator
# into target/x86_64-unknown-linux-gnu/release/. The musl target cannot be installed on our
# build machines; see README.md "Static binaries".
set -euo pipefail
cd "$(dirname "$0")/.."
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --release --locked --target x86_64-unknown-linux-gnu -p swarm-agent -p swarm-coordinator
