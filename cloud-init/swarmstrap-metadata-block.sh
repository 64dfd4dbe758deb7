#!/bin/sh
# swarmstrap: containers may not reach the cloud's metadata service (user-data holds the join
# secret on DigitalOcean/Scaleway; AWS serves instance credentials). REJECTs, in Docker's
# DOCKER-USER chain, 169.254.169.254 (AWS, DO), 169.254.42.42 (Scaleway), fd00:ec2::254 (AWS
# IPv6). The host's own processes are unaffected; `--network host` containers are the host (see
# SECURITY.md). Idempotent; safe before or after dockerd starts (dockerd keeps DOCKER-USER).
# Test seam: SWARMSTRAP_IPTABLES / SWARMSTRAP_IP6TABLES.
set -eu

IPT="${SWARMSTRAP_IPTABLES:-iptables}"
IPT6="${SWARMSTRAP_IP6TABLES:-ip6tables}"
V4="169.254.169.254 169.254.42.42"
V6="fd00:ec2::254"
COMMENT="swarmstrap: containers may not reach the metadata service"

log() { echo "swarmstrap-metadata-block: $*" >&2; }

block() {
  ipt=$1
  shift
  # -w: wait for the xtables lock (dockerd may be changing rules right now).
  $ipt -w -n -L DOCKER-USER >/dev/null 2>&1 || $ipt -w -N DOCKER-USER
  for addr in "$@"; do
    for proto in tcp udp; do
      if ! $ipt -w -C DOCKER-USER -d "$addr" -p "$proto" -m comment --comment "$COMMENT" -j REJECT 2>/dev/null; then
        $ipt -w -I DOCKER-USER -d "$addr" -p "$proto" -m comment --comment "$COMMENT" -j REJECT
        log "blocked $proto to $addr from containers ($ipt)"
      fi
    done
  done
}

block "$IPT" $V4
if command -v "$IPT6" >/dev/null 2>&1 && $IPT6 -w -n -L >/dev/null 2>&1; then
  block "$IPT6" $V6
else
  log "no usable $IPT6: IPv6 metadata address not blocked (no IPv6 on this host?)"
fi
