#!/usr/bin/env bash
# Benchmark (not a test): swarm-coordinator vs etcd under N simulated agents (default 10000),
# side by side in one run. Prints figures; never fails on a threshold.
#
#   bash scripts/bench-etcd.sh [N] [load_vs_etcd flags...]
#   bash scripts/bench-etcd.sh 10000 --etcd-tls      # etcd over TLS too
#   bash scripts/bench-etcd.sh 10000 --help          # every flag
#
# With --through-backend first: the same workload through the etcd backend's code path
# (EtcdRendezvous, one per simulated agent) on a 3-member etcd with TLS + auth (default N 1000;
# example etcd/examples/load_backend.rs; needs protoc to build the etcd crate):
#
#   bash scripts/bench-etcd.sh --through-backend [N] [load_backend flags...]
#   bash scripts/bench-etcd.sh --through-backend 1000 --inflight 100
#
# Installs Debian's etcd-server if etcd is missing, raises the open-files limit (each side holds
# about N connections), builds the release coordinator and the example, and runs it. The
# example starts its own etcd on free loopback ports with a temp data dir; an etcd the package
# may have started as a system service (2379/2380) is left alone and never used.
set -euo pipefail
cd "$(dirname "$0")/.."

backend=0
if [ "${1:-}" = --through-backend ]; then
    backend=1
    shift
fi
if [ "$backend" = 1 ]; then N="${1:-1000}"; else N="${1:-10000}"; fi
[ $# -gt 0 ] && shift
case "$N" in
'' | *[!0-9]*)
    echo "usage: $0 [--through-backend] [N] [load_vs_etcd or load_backend flags...]" >&2
    exit 2
    ;;
esac

if ! command -v etcd >/dev/null 2>&1; then
    echo "etcd not found: installing Debian's etcd-server" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y etcd-server || { apt-get update && apt-get install -y etcd-server; }
fi
if [ "$backend" = 1 ] && ! command -v protoc >/dev/null 2>&1; then
    # etcd-client's build script compiles etcd's protos.
    echo "protoc not found: installing Debian's protobuf-compiler" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y protobuf-compiler || { apt-get update && apt-get install -y protobuf-compiler; }
fi

# Each process (generator, coordinator, etcd) holds about N sockets; through the backend, every
# simulated agent's client connects to each of the 3 members (3N in the generator).
if [ "$backend" = 1 ]; then need=$((3 * N + 1024)); else need=$((N + 1024)); fi
hard="$(ulimit -Hn)"
if [ "$hard" != unlimited ] && [ "$hard" -lt "$need" ]; then
    ulimit -Hn "$need" 2>/dev/null || {
        echo "$N agents need $need open files per process; the hard limit is $hard and cannot be raised here" >&2
        exit 1
    }
fi
ulimit -n "$(ulimit -Hn)"

target="${CARGO_TARGET_DIR:-target}"
if [ "$backend" = 1 ]; then
    cargo build --release -p swarmstrap-etcd --features testing --example load_backend
    bin="$target/release/examples/load_backend"
else
    cargo build --release -p swarm-coordinator --bin swarm-coordinator --example load_vs_etcd
    bin="$target/release/examples/load_vs_etcd"
fi

echo "nproc $(nproc), $(free -g | awk '/^Mem:/ {print $2}') GiB, kernel $(uname -r), $(etcd --version | head -1), ulimit -n $(ulimit -n), load $(cut -d' ' -f1-3 /proc/loadavg)" >&2

# The example kills its servers on exit, error, SIGINT and SIGTERM. It runs in its own process
# group (started in the background, so setsid does not fork: its pid is the group id) so that
# an interrupted script also stops everything it started, and nothing else.
pid=""
cleanup() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        if [ "$(ps -o pgid= -p "$pid" | tr -d ' ')" = "$pid" ]; then
            kill -TERM -- "-$pid" 2>/dev/null || true
        else
            kill -TERM "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
setsid "$bin" "$N" "$@" &
pid=$!
wait "$pid"
