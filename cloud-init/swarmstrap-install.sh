#!/bin/sh
# swarmstrap first-boot installer, run by cloud-init (runcmd) on every swarmstrap VM.
#
#   swarmstrap-install.sh install --name swarm-agent --url URL --sha256 HEX \
#       [--docker distro|VERSION|none] [--start UNIT]...
#     1. installs the Docker engine from the distribution's own packages (unless --docker none):
#        Ubuntu 22.04/24.04 and Debian 12: docker.io; Amazon Linux 2023: docker (dnf)
#     2. downloads the binary NAME from URL and checks its sha256: on a mismatch nothing is
#        installed and the script exits 1 (cloud-init then reports the boot as failed)
#     3. installs it as /usr/local/bin/NAME (atomically) and enables + starts each UNIT
#
#   swarmstrap-install.sh retry SECONDS COMMAND [ARG]...
#     runs COMMAND until it succeeds, with capped exponential backoff and jitter, for at most
#     SECONDS; exits with COMMAND's last status when the deadline passes.
#
# POSIX sh (dash, busybox ash, bash). Idempotent: a second run finds the binary in place.
# Test seams (environment): SWARMSTRAP_ROOT (install prefix, default /), SWARMSTRAP_OS_RELEASE
# (default /etc/os-release), SWARMSTRAP_PKG_DRY_RUN=1 (print package commands, run none),
# SWARMSTRAP_NO_SYSTEMD=1 (skip systemctl).
set -eu

ROOT="${SWARMSTRAP_ROOT:-}"
OS_RELEASE="${SWARMSTRAP_OS_RELEASE:-/etc/os-release}"
# Package managers at first boot: mirrors or the network may still be settling.
PKG_DEADLINE_SECS=900
# Apt's own wait for the dpkg lock (unattended-upgrades often holds it right after boot).
APT_LOCK_TIMEOUT_SECS=600

log() { echo "swarmstrap-install: $*" >&2; }
die() { log "error: $*"; exit 1; }

# A random number 0..65535 for backoff jitter.
rand16() { od -An -N2 -tu2 /dev/urandom | tr -d ' \n'; }

# retry DEADLINE_SECS CMD...: capped exponential backoff (1 s doubling to 30 s) with jitter.
retry() {
  deadline=$(( $(date +%s) + $1 ))
  shift
  what="$*"
  delay=1
  attempt=1
  while :; do
    if "$@"; then
      return 0
    else
      status=$?
    fi
    now=$(date +%s)
    if [ "$now" -ge "$deadline" ]; then
      log "giving up after $attempt attempts: $what (exit $status)"
      return "$status"
    fi
    wait_s=$(( delay + $(rand16) % (delay + 1) ))
    if [ $(( now + wait_s )) -gt "$deadline" ]; then
      wait_s=$(( deadline - now ))
    fi
    log "attempt $attempt of '$what' failed (exit $status); retrying in ${wait_s}s"
    sleep "$wait_s"
    attempt=$(( attempt + 1 ))
    delay=$(( delay * 2 ))
    if [ "$delay" -gt 30 ]; then delay=30; fi
  done
}

pkg() {
  if [ "${SWARMSTRAP_PKG_DRY_RUN:-0}" = 1 ]; then
    echo "pkg: $*"
    return 0
  fi
  "$@"
}

# Prints "apt" or "dnf", or fails with the distribution it does not support.
detect_pkg_family() {
  [ -r "$OS_RELEASE" ] || die "cannot read $OS_RELEASE: cannot tell which distribution this is"
  # shellcheck disable=SC1090
  ID="" ID_LIKE="" VERSION_ID=""
  . "$OS_RELEASE"
  case "$ID" in
    ubuntu)
      case "$VERSION_ID" in
        22.04 | 24.04) ;;
        *) log "warning: Ubuntu $VERSION_ID is not tested (tested: 22.04, 24.04); trying docker.io" ;;
      esac
      echo apt ;;
    debian)
      case "$VERSION_ID" in
        12) ;;
        *) log "warning: Debian $VERSION_ID is not tested (tested: 12); trying docker.io" ;;
      esac
      echo apt ;;
    amzn)
      [ "$VERSION_ID" = 2023 ] || die "Amazon Linux $VERSION_ID is not supported: use Amazon Linux 2023"
      echo dnf ;;
    *)
      case " $ID_LIKE " in
        *" debian "* | *" ubuntu "*)
          log "warning: $ID is not tested; treating it like Debian (docker.io)"
          echo apt ;;
        *) die "distribution '$ID' is not supported: use Ubuntu 22.04/24.04, Debian 12 or Amazon Linux 2023" ;;
      esac ;;
  esac
}

apt_get() {
  DEBIAN_FRONTEND=noninteractive apt-get -q -y -o "DPkg::Lock::Timeout=$APT_LOCK_TIMEOUT_SECS" "$@"
}

install_docker() {
  version="$1"
  if [ "$version" = none ]; then
    return 0
  fi
  if [ "${SWARMSTRAP_PKG_DRY_RUN:-0}" != 1 ] && command -v dockerd >/dev/null 2>&1; then
    log "a Docker engine is already installed ($(command -v dockerd)); not installing another"
    return 0
  fi
  family=$(detect_pkg_family)
  case "$family" in
    apt)
      spec=docker.io
      [ "$version" = distro ] || spec="docker.io=$version"
      retry "$PKG_DEADLINE_SECS" pkg apt_get update
      retry "$PKG_DEADLINE_SECS" pkg apt_get install --no-install-recommends "$spec" ca-certificates curl
      ;;
    dnf)
      spec=docker
      [ "$version" = distro ] || spec="docker-$version"
      retry "$PKG_DEADLINE_SECS" pkg dnf install -y "$spec"
      ;;
  esac
}

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

fetch() {
  url="$1" out="$2"
  if command -v curl >/dev/null 2>&1; then
    # curl's own retries back off exponentially (1 s doubling) inside --retry-max-time.
    curl -fsSL --retry 10 --retry-connrefused --retry-max-time 600 --connect-timeout 15 \
      --max-time 600 -o "$out" "$url"
  elif command -v wget >/dev/null 2>&1; then
    retry 600 wget -q -T 60 -O "$out" "$url"
  else
    die "neither curl nor wget is installed: cannot download $url"
  fi
}

install_binary() {
  name="$1" url="$2" want="$3"
  bindir="$ROOT/usr/local/bin"
  dest="$bindir/$name"
  if [ -f "$dest" ] && [ "$(sha256_of "$dest")" = "$want" ]; then
    log "$dest is already the wanted build (sha256 $want)"
    chmod 0755 "$dest"
    return 0
  fi
  mkdir -p "$bindir"
  tmp="$dest.download.$$"
  trap 'rm -f "$tmp"' EXIT
  log "downloading $name from $url"
  fetch "$url" "$tmp" || die "download of $url failed"
  got=$(sha256_of "$tmp")
  if [ "$got" != "$want" ]; then
    rm -f "$tmp"
    die "sha256 mismatch for $url: expected $want, got $got. Not installing $name. Check agent_url/agent_sha256 (or coordinator_url/coordinator_sha256) in your Terraform variables."
  fi
  chmod 0755 "$tmp"
  mv -f "$tmp" "$dest"
  trap - EXIT
  log "installed $dest (sha256 $got)"
}

systemctl_() {
  if [ "${SWARMSTRAP_NO_SYSTEMD:-0}" = 1 ]; then
    echo "systemctl: $*"
    return 0
  fi
  systemctl "$@"
}

cmd_install() {
  name="" url="" sha="" docker=none units=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --name) name="$2"; shift 2 ;;
      --url) url="$2"; shift 2 ;;
      --sha256) sha="$2"; shift 2 ;;
      --docker) docker="$2"; shift 2 ;;
      --start) units="$units $2"; shift 2 ;;
      *) die "install: unknown option '$1' (see the header of this script)" ;;
    esac
  done
  [ -n "$name" ] || die "install: --name is required"
  case "$name" in
    swarm-agent | swarm-coordinator) ;;
    *) die "install: --name must be swarm-agent or swarm-coordinator, not '$name'" ;;
  esac
  [ -n "$url" ] || die "install: --url is required"
  case "$url" in
    https://* | http://*) ;;
    *) die "install: --url must be an http(s) URL, not '$url'" ;;
  esac
  sha=$(echo "$sha" | tr 'A-F' 'a-f')
  echo "$sha" | grep -Eq '^[0-9a-f]{64}$' || die "install: --sha256 must be 64 hex digits, not '$sha'"
  arch=$(uname -m)
  [ "$arch" = x86_64 ] || die "$name is built for x86_64 only; this machine is $arch"

  install_docker "$docker"
  install_binary "$name" "$url" "$sha"
  systemctl_ daemon-reload
  if [ "$docker" != none ]; then
    systemctl_ enable --now docker.service
  fi
  for unit in $units; do
    systemctl_ enable --now "$unit"
  done
  log "done"
}

case "${1:-}" in
  install) shift; cmd_install "$@" ;;
  retry)
    shift
    [ $# -ge 2 ] || die "usage: $0 retry SECONDS COMMAND [ARG]..."
    echo "$1" | grep -Eq '^[0-9]+$' || die "retry: SECONDS must be a number, not '$1'"
    retry "$@" ;;
  *) die "usage: $0 install --name NAME --url URL --sha256 HEX [--docker distro|VERSION|none] [--start UNIT]... | $0 retry SECONDS COMMAND [ARG]..." ;;
esac
