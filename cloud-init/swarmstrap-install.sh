#!/bin/sh
# swarmstrap installer: first boot (cloud-init runcmd) and in-place upgrades of swarmstrap VMs.
#
#   swarmstrap-install.sh install --name NAME --version V [--base-url URL] [--public-key KEY] \
#       [--docker distro|VERSION|none] [--start UNIT]...
#   swarmstrap-install.sh install --name NAME --url URL --sha256 HEX [--docker ...] [--start UNIT]...
#     NAME is swarm-agent or swarm-coordinator.
#     1. finds the binary: with --version, from the signed release V (release/README.md):
#        downloads BASE/vV/SHA256SUMS and SHA256SUMS.minisig, checks the minisign signature
#        against KEY (key id, Ed25519 over BLAKE2b-512, the global signature over the trusted
#        comment, which must be exactly "swarmstrap V SHA256SUMS"), and takes the sha256 of
#        NAME-V-ARCH (ARCH from `uname -m`: x86_64, or aarch64/arm64 -> aarch64) from it.
#        With --url/--sha256 (an air-gapped mirror without the signature files): that file and
#        that sha256, no signature check.
#     2. downloads the binary and checks its sha256; every check runs before anything is
#        installed, and a failed one installs nothing, says which check failed, and exits 1
#        (cloud-init then reports the boot as failed)
#     3. installs the Docker engine from the distribution's own packages (unless --docker none):
#        Ubuntu 22.04/24.04 and Debian 12: docker.io; Amazon Linux 2023: docker (dnf)
#     4. installs the binary as /usr/local/bin/NAME (atomically) and enables + starts each UNIT
#
#   swarmstrap-install.sh upgrade [--name NAME] --version V [--base-url URL] [--public-key KEY] \
#       [--unit UNIT]
#   swarmstrap-install.sh upgrade [--name NAME] --url URL --sha256 HEX [--unit UNIT]
#     the same checks, then replaces /usr/local/bin/NAME atomically (rename) and runs
#     `systemctl restart UNIT` (default NAME.service). NAME defaults to swarm-agent. Nothing
#     changes (no restart) when the installed binary already is that build. For swarm-agent,
#     --base-url and --public-key default to the [release] table of
#     /etc/swarm-agent/config.toml (written by cloud-init), then to the defaults below.
#
#   swarmstrap-install.sh retry SECONDS COMMAND [ARG]...
#     runs COMMAND until it succeeds, with capped exponential backoff and jitter, for at most
#     SECONDS; exits with COMMAND's last status when the deadline passes.
#
# POSIX sh (dash, busybox ash, bash); needs curl or wget, sha256sum, and openssl >= 3 for the
# signature. Idempotent: a second run finds the binary in place.
# Test seams (environment): SWARMSTRAP_ROOT (install prefix, default /), SWARMSTRAP_OS_RELEASE
# (default /etc/os-release), SWARMSTRAP_PKG_DRY_RUN=1 (print package commands, run none),
# SWARMSTRAP_NO_SYSTEMD=1 (skip systemctl), SWARMSTRAP_UNAME_M (the machine architecture instead
# of `uname -m`), SWARMSTRAP_ALLOW_HTTP=1 (accept an http:// --base-url; tests serve a release
# over loopback HTTP).
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

# Temporary files of this run, removed on every exit: the signature work directory and a
# downloaded binary not yet renamed into place.
WORK=""
TMPBIN=""
cleanup() {
  if [ -n "$WORK" ]; then rm -rf "$WORK"; fi
  if [ -n "$TMPBIN" ]; then rm -f "$TMPBIN"; fi
}
trap cleanup EXIT

# refuse CHECK MESSAGE: a failed check of the release. Nothing has been installed yet.
refuse() {
  check="$1"
  shift
  die "$check check failed: $* Nothing was installed."
}

# ---- the release: which file, and its signed sha256 ------------------------------------------

# The release layout and signature contract: release/README.md.
DEFAULT_BASE_URL="https://github.com/swarmstrap/swarmstrap/releases/download"
# The project's release key: the second line of release/minisign.pub (key id 8439ED32A958BE78).
DEFAULT_PUBLIC_KEY="RWR4vlipMu05hIPtqkMIxHLPXRyTYNBdA6Bn7gfr86Emuv6kwwF887N7"
AGENT_CONFIG="$ROOT/etc/swarm-agent/config.toml"

# The release's name for this machine's architecture.
machine_arch() {
  m="${SWARMSTRAP_UNAME_M:-$(uname -m)}"
  case "$m" in
    x86_64 | amd64) echo x86_64 ;;
    aarch64 | arm64) echo aarch64 ;;
    *) die "architecture check failed: this machine is '$m'; swarmstrap releases are built for x86_64 and aarch64 (arm64) only. Use an x86_64 or arm64 instance type. Nothing was installed." ;;
  esac
}

check_version() {
  case "$1" in
    v[0-9]*) die "--version '$1': give the release version without the leading v (e.g. ${1#v})" ;;
  esac
  echo "$1" | grep -Eq '^[0-9]+\.[0-9]+\.[0-9]+([-+][0-9A-Za-z.+-]+)?$' \
    || die "--version '$1' is not a release version such as 0.2.0"
}

# Prints the base URL without a trailing slash, or fails saying what is wrong with it.
check_base_url() {
  case "$1" in
    https://*) ;;
    http://*)
      [ "${SWARMSTRAP_ALLOW_HTTP:-0}" = 1 ] \
        || die "--base-url must be an https:// URL, not '$1' (the release files are signed, but an https mirror keeps them private and complete)" ;;
    *) die "--base-url must be an https:// URL, not '$1'" ;;
  esac
  case "$1" in
    *[!A-Za-z0-9._~:/%@+=,-]*) die "--base-url '$1' has characters a release URL does not need (spaces, quotes, ?, &, #)" ;;
  esac
  printf '%s\n' "${1%/}"
}

# base64 of argument 1 decoded to stdout.
b64d() { printf '%s' "$1" | openssl base64 -d -A 2>/dev/null; }
# bytes FILE SKIP COUNT: COUNT bytes of FILE from offset SKIP, to stdout.
bytes() { dd if="$1" bs=1 skip="$2" count="$3" 2>/dev/null; }
# A minisign key id as minisign prints it (the 8 bytes little-endian, upper-case hex).
key_id() { od -An -tx1 -v | awk '{ for (i = 1; i <= NF; i++) id = toupper($i) id } END { print id }'; }
size_of() { wc -c <"$1" | tr -d ' '; }

# The value of KEY in the [release] table of the agent's config (a quoted TOML string), or
# nothing. Only what cloud-init writes there (plain "..." values) is understood.
release_setting() {
  [ -r "$AGENT_CONFIG" ] || return 0
  awk -v key="$1" '
    /^[ \t]*\[/ { in_release = ($0 ~ /^[ \t]*\[release\][ \t]*(#.*)?$/); next }
    in_release && $0 ~ ("^[ \t]*" key "[ \t]*=") {
      sub(/^[^=]*=[ \t]*/, ""); sub(/[ \t]*(#.*)?$/, "")
      if ($0 ~ /^".*"$/) print substr($0, 2, length($0) - 2)
      exit
    }' "$AGENT_CONFIG"
}

# verify_sums DIR VERSION PUBLIC_KEY URL: checks DIR/SHA256SUMS against DIR/SHA256SUMS.minisig
# (downloaded from URL) the way `minisign -V` does, with openssl: key id, the Ed25519 signature
# over BLAKE2b-512 of the file, the global signature over the trusted comment, and that the
# trusted comment names VERSION (a signed SHA256SUMS of another version is a replay).
verify_sums() {
  dir="$1" version="$2" key="$3" url="$4"
  command -v openssl >/dev/null 2>&1 \
    || refuse "signature" "openssl is not installed; it checks the release signature. Install it (apt-get install openssl, or dnf install openssl) and run again."
  b64d "$key" >"$dir/pk" || true
  if [ "$(size_of "$dir/pk")" != 42 ] || [ "$(bytes "$dir/pk" 0 2)" != Ed ]; then
    refuse "public key" "'$key' is not a minisign Ed25519 public key (the second line of a minisign.pub file, e.g. of release/minisign.pub). Fix --public-key (release_public_key in Terraform)."
  fi
  tr -d '\r' <"$dir/SHA256SUMS.minisig" >"$dir/minisig"
  sig_line=$(sed -n 2p "$dir/minisig")
  comment_line=$(sed -n 3p "$dir/minisig")
  global_line=$(sed -n 4p "$dir/minisig")
  b64d "$sig_line" >"$dir/sig" || true
  if [ "$(size_of "$dir/sig")" != 74 ]; then
    refuse "signature" "$url is not a minisign signature file. Check that the release (or your mirror) has SHA256SUMS.minisig next to SHA256SUMS."
  fi
  if [ "$(bytes "$dir/sig" 0 2)" != ED ]; then
    refuse "signature" "$url is not a prehashed (ED) minisign signature; releases are signed with \`minisign -S\` (without -l)."
  fi
  pk_id=$(bytes "$dir/pk" 2 8 | key_id)
  sig_id=$(bytes "$dir/sig" 2 8 | key_id)
  if [ "$pk_id" != "$sig_id" ]; then
    refuse "key id" "SHA256SUMS is signed by key $sig_id, not by the trusted key $pk_id. Use the public key of whoever signed this release (--public-key, release_public_key in Terraform), or a release signed by the trusted key."
  fi
  bytes "$dir/sig" 10 64 >"$dir/sig.raw"
  # DER SubjectPublicKeyInfo of an Ed25519 key: 302a300506032b6570032100, then the 32 key bytes.
  { printf '\060\052\060\005\006\003\053\145\160\003\041\000'; bytes "$dir/pk" 10 32; } >"$dir/pk.der"
  openssl dgst -blake2b512 -binary "$dir/SHA256SUMS" >"$dir/sums.b2"
  if ! openssl pkeyutl -verify -pubin -inkey "$dir/pk.der" -keyform DER -rawin \
    -in "$dir/sums.b2" -sigfile "$dir/sig.raw" >/dev/null 2>&1; then
    refuse "signature" "SHA256SUMS does not match its signature by the trusted key $pk_id: it was altered or corrupted on the way. Download it again, or check your mirror's copy against the release."
  fi
  case "$comment_line" in
    "trusted comment: "*) ;;
    *) refuse "signature" "$url has no trusted comment line; it is not a minisign signature file." ;;
  esac
  comment="${comment_line#trusted comment: }"
  b64d "$global_line" >"$dir/global" || true
  { cat "$dir/sig.raw"; printf '%s' "$comment"; } >"$dir/global.msg"
  if [ "$(size_of "$dir/global")" != 64 ] || ! openssl pkeyutl -verify -pubin -inkey "$dir/pk.der" \
    -keyform DER -rawin -in "$dir/global.msg" -sigfile "$dir/global" >/dev/null 2>&1; then
    refuse "trusted comment signature" "the trusted comment '$comment' in $url is not signed by the trusted key $pk_id (it was edited)."
  fi
  if [ "$comment" != "swarmstrap $version SHA256SUMS" ]; then
    refuse "version" "the signed SHA256SUMS under v$version says '$comment', not 'swarmstrap $version SHA256SUMS': it belongs to another release (a mirror with the wrong files, or a replayed old release). Fix the mirror, or ask for the version it holds."
  fi
  log "SHA256SUMS of $version: signature by key $pk_id verified"
}

# resolve_release NAME VERSION BASE_URL PUBLIC_KEY: sets BIN_URL and BIN_SHA to this machine's
# file of the release and its sha256 from the verified SHA256SUMS.
resolve_release() {
  name="$1" version="$2" base="$3" key="$4"
  arch=$(machine_arch)
  file="$name-$version-$arch"
  dir_url="$base/v$version"
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/swarmstrap-install.XXXXXX")
  log "release $version: fetching $dir_url/SHA256SUMS and its signature"
  fetch "$dir_url/SHA256SUMS" "$WORK/SHA256SUMS" \
    || refuse "download" "could not download $dir_url/SHA256SUMS. Check that $version is a published release and that the base URL ($base) is right and reachable."
  fetch "$dir_url/SHA256SUMS.minisig" "$WORK/SHA256SUMS.minisig" \
    || refuse "download" "could not download $dir_url/SHA256SUMS.minisig; a release (or mirror) without its signature is not installed. Copy SHA256SUMS.minisig to the mirror too."
  verify_sums "$WORK" "$version" "$key" "$dir_url/SHA256SUMS.minisig"
  BIN_SHA=$(awk -v f="$file" '$2 == f || $2 == ("*" f) { print $1; n++ } END { exit n == 1 ? 0 : 1 }' "$WORK/SHA256SUMS") \
    || refuse "SHA256SUMS" "the signed SHA256SUMS of $version has no single line for $file (this machine is $arch). Check the release's file list (release/README.md)."
  echo "$BIN_SHA" | grep -Eq '^[0-9a-f]{64}$' \
    || refuse "SHA256SUMS" "the line for $file in SHA256SUMS has no sha256 ('$BIN_SHA')."
  BIN_URL="$dir_url/$file"
  BIN_HINT="$BIN_URL does not match its line in the signed SHA256SUMS: the download was corrupted or altered. Try again, or check your mirror's copy of $file."
}

# ---- download, check, put in place -----------------------------------------------------------

# download_binary NAME URL SHA256: leaves the checked download in TMPBIN (next to the
# destination, for an atomic rename), or sets TMPBIN="" when the installed binary already is
# that build.
download_binary() {
  name="$1" url="$2" want="$3"
  bindir="$ROOT/usr/local/bin"
  dest="$bindir/$name"
  if [ -f "$dest" ] && [ "$(sha256_of "$dest")" = "$want" ]; then
    log "$dest is already the wanted build (sha256 $want)"
    TMPBIN=""
    return 0
  fi
  mkdir -p "$bindir"
  TMPBIN="$dest.download.$$"
  log "downloading $name from $url"
  fetch "$url" "$TMPBIN" || refuse "download" "could not download $url."
  got=$(sha256_of "$TMPBIN")
  if [ "$got" != "$want" ]; then
    rm -f "$TMPBIN"
    TMPBIN=""
    refuse "sha256" "sha256 mismatch for $url: expected $want, got $got. Not installing $name. $BIN_HINT"
  fi
}

# Renames the checked download over /usr/local/bin/NAME (atomic: a running process keeps the
# old file, a new one starts the new file, nothing ever sees half a binary).
put_in_place() {
  name="$1"
  dest="$ROOT/usr/local/bin/$name"
  if [ -z "$TMPBIN" ]; then
    chmod 0755 "$dest"
    return 0
  fi
  chmod 0755 "$TMPBIN"
  sync
  mv -f "$TMPBIN" "$dest"
  TMPBIN=""
  log "installed $dest (sha256 $(sha256_of "$dest"))"
}

systemctl_() {
  if [ "${SWARMSTRAP_NO_SYSTEMD:-0}" = 1 ]; then
    echo "systemctl: $*"
    return 0
  fi
  systemctl "$@"
}

check_name() {
  case "$1" in
    swarm-agent | swarm-coordinator) ;;
    "") die "$2: --name is required" ;;
    *) die "$2: --name must be swarm-agent or swarm-coordinator, not '$1'" ;;
  esac
}

# choose_binary VERB NAME VERSION BASE_URL PUBLIC_KEY URL SHA256: validates the options and sets
# BIN_URL, BIN_SHA and BIN_HINT (after the signature checks, for a release).
choose_binary() {
  verb="$1" name="$2" version="$3" base="$4" key="$5" url="$6" sha="$7"
  if [ -n "$version" ] && { [ -n "$url" ] || [ -n "$sha" ]; }; then
    die "$verb: give either --version (a signed release) or --url with --sha256 (an explicit file), not both"
  fi
  if [ -n "$version" ]; then
    check_version "$version"
    base=$(check_base_url "${base:-$DEFAULT_BASE_URL}")
    resolve_release "$name" "$version" "$base" "${key:-$DEFAULT_PUBLIC_KEY}"
    return 0
  fi
  [ -n "$url" ] || die "$verb: --version is required (or --url with --sha256 for a file without a signed release)"
  case "$url" in
    https://* | http://*) ;;
    *) die "$verb: --url must be an http(s) URL, not '$url'" ;;
  esac
  sha=$(echo "$sha" | tr 'A-F' 'a-f')
  echo "$sha" | grep -Eq '^[0-9a-f]{64}$' || die "$verb: --sha256 must be 64 hex digits, not '$sha'"
  log "using $url with the sha256 given on the command line (no release signature to check)"
  BIN_URL="$url"
  BIN_SHA="$sha"
  BIN_HINT="Check agent_url/agent_sha256 (or coordinator_binary_url/coordinator_binary_sha256) in your Terraform variables."
}

cmd_install() {
  name="" version="" base="" key="" url="" sha="" docker=none units=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --name | --version | --base-url | --public-key | --url | --sha256 | --docker | --start)
        [ $# -ge 2 ] || die "install: option '$1' needs a value" ;;
      *) die "install: unknown option '$1' (see the header of this script)" ;;
    esac
    case "$1" in
      --name) name="$2" ;;
      --version) version="$2" ;;
      --base-url) base="$2" ;;
      --public-key) key="$2" ;;
      --url) url="$2" ;;
      --sha256) sha="$2" ;;
      --docker) docker="$2" ;;
      --start) units="$units $2" ;;
    esac
    shift 2
  done
  check_name "$name" install
  choose_binary install "$name" "$version" "$base" "$key" "$url" "$sha"
  # Every check of the binary passes before anything is installed.
  download_binary "$name" "$BIN_URL" "$BIN_SHA"

  install_docker "$docker"
  put_in_place "$name"
  systemctl_ daemon-reload
  if [ "$docker" != none ]; then
    systemctl_ enable --now docker.service
  fi
  for unit in $units; do
    systemctl_ enable --now "$unit"
  done
  log "done"
}

cmd_upgrade() {
  name=swarm-agent version="" base="" key="" url="" sha="" unit=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --name | --version | --base-url | --public-key | --url | --sha256 | --unit)
        [ $# -ge 2 ] || die "upgrade: option '$1' needs a value" ;;
      *) die "upgrade: unknown option '$1' (see the header of this script)" ;;
    esac
    case "$1" in
      --name) name="$2" ;;
      --version) version="$2" ;;
      --base-url) base="$2" ;;
      --public-key) key="$2" ;;
      --url) url="$2" ;;
      --sha256) sha="$2" ;;
      --unit) unit="$2" ;;
    esac
    shift 2
  done
  check_name "$name" upgrade
  unit="${unit:-$name.service}"
  dest="$ROOT/usr/local/bin/$name"
  [ -f "$dest" ] || die "upgrade: $dest is not installed; use \`$0 install\`"
  if [ "$name" = swarm-agent ] && [ -n "$version" ]; then
    # The agent's own `swarm-agent upgrade` reads the same [release] table.
    [ -n "$base" ] || base=$(release_setting base_url)
    [ -n "$key" ] || key=$(release_setting public_key)
  fi
  choose_binary upgrade "$name" "$version" "$base" "$key" "$url" "$sha"
  download_binary "$name" "$BIN_URL" "$BIN_SHA"
  if [ -z "$TMPBIN" ]; then
    log "$name is already ${version:-that build}; nothing to do (not restarting $unit)"
    return 0
  fi
  put_in_place "$name"
  systemctl_ restart "$unit"
  log "upgraded $name to ${version:-$BIN_URL} and restarted $unit"
}

case "${1:-}" in
  install) shift; cmd_install "$@" ;;
  upgrade) shift; cmd_upgrade "$@" ;;
  retry)
    shift
    [ $# -ge 2 ] || die "usage: $0 retry SECONDS COMMAND [ARG]..."
    echo "$1" | grep -Eq '^[0-9]+$' || die "retry: SECONDS must be a number, not '$1'"
    retry "$@" ;;
  *) die "usage: $0 install --name NAME (--version V [--base-url URL] [--public-key KEY] | --url URL --sha256 HEX) [--docker distro|VERSION|none] [--start UNIT]... | $0 upgrade [--name NAME] (--version V [--base-url URL] [--public-key KEY] | --url URL --sha256 HEX) [--unit UNIT] | $0 retry SECONDS COMMAND [ARG]..." ;;
esac
