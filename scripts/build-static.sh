#!/usr/bin/env bash
# Builds the static (musl) release binaries of swarm-agent and swarm-coordinator into
# target/{ARCH}-unknown-linux-musl/release/ (the lab tests run the x86_64 ones).
#
#   bash scripts/build-static.sh                 # x86_64 only (the lab build)
#   bash scripts/build-static.sh x86_64 aarch64  # both (scripts/release.sh)
#
# Why musl and not static glibc: musl's resolver reads /etc/resolv.conf and /etc/hosts itself,
# without NSS modules, so names resolve on any distribution and in an empty chroot; a static
# glibc getaddrinfo still dlopens the host's NSS modules. See release/README.md.
#
# The cross linker is set here, in the environment of this build only, not in a committed
# .cargo/config that would change every other build. Extra cargo arguments (e.g. a profile)
# come from SWARMSTRAP_CARGO_ARGS; SWARMSTRAP_VERSION, when set, is stamped into --version.
set -euo pipefail
cd "$(dirname "$0")/.."

# The version --version reports: the workspace's unless a release stamps its own. Set even
# then, so this lab build and scripts/test-artifacts.sh's release of the same version share
# one build instead of relinking both binaries for a changed environment.
if [ -z "${SWARMSTRAP_VERSION:-}" ]; then
  SWARMSTRAP_VERSION=$(cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "swarm-agent"))')
fi
export SWARMSTRAP_VERSION

arches=("$@")
[ ${#arches[@]} -gt 0 ] || arches=(x86_64)

for arch in "${arches[@]}"; do
  case "$arch" in
    x86_64)
      # musl-gcc (musl-tools) for the C parts (ring); rustc links with its self-contained musl.
      command -v musl-gcc >/dev/null || { echo "build-static: musl-gcc missing (apt-get install musl-tools; see scripts/setup.sh)" >&2; exit 1; }
      export CC_x86_64_unknown_linux_musl=musl-gcc
      ;;
    aarch64)
      # ring's C and assembly need a C compiler for the target (and the few libc headers it
      # includes: libc6-dev-arm64-cross); rustc's self-contained musl crt and libc do the rest,
      # so the GNU cross gcc is enough as compiler and linker driver.
      command -v aarch64-linux-gnu-gcc >/dev/null || { echo "build-static: aarch64-linux-gnu-gcc missing (apt-get install gcc-aarch64-linux-gnu; see scripts/setup.sh)" >&2; exit 1; }
      export CC_aarch64_unknown_linux_musl=aarch64-linux-gnu-gcc
      export AR_aarch64_unknown_linux_musl=aarch64-linux-gnu-ar
      export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=aarch64-linux-gnu-gcc
      ;;
    *)
      echo "build-static: unknown arch '$arch' (x86_64 or aarch64)" >&2
      exit 2
      ;;
  esac
  target="$arch-unknown-linux-musl"
  rustup target list --installed 2>/dev/null | grep -qx "$target" \
    || { echo "build-static: rust target $target missing (rustup target add $target; see scripts/setup.sh)" >&2; exit 1; }
  echo "build-static: building $target" >&2
  # shellcheck disable=SC2086 # SWARMSTRAP_CARGO_ARGS is a word list on purpose
  cargo build --release --locked --target "$target" -p swarm-agent -p swarm-coordinator \
    ${SWARMSTRAP_CARGO_ARGS:-}
done
