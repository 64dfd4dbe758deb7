#!/bin/sh
# Installs what the swarmstrap lab needs (Debian 12, as root): a Docker engine (dockerd +
# containerd + runc), iproute2, iptables, util-linux (nsenter, unshare) and busybox-static
# (the lab's busybox image and `busybox ping` / `busybox wget` inside the namespaces).
# Idempotent: does nothing when everything is there.
set -eu
pkgs="docker.io iproute2 iptables util-linux busybox-static"
missing=""
for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "tests/setup.sh: need root to install:$missing" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq $missing >/dev/null
fi
# The lab starts its own dockerds; a system one is not needed (and not touched).
for t in dockerd containerd runc docker ip iptables nsenter unshare busybox; do
    command -v "$t" >/dev/null || { echo "tests/setup.sh: $t still missing" >&2; exit 1; }
done
echo "tests/setup.sh: lab prerequisites present"
