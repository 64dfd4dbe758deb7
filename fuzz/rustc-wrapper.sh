#!/usr/bin/env bash
# RUSTC_WRAPPER for the quick fuzz build (scripts/fuzz.sh): cargo-fuzz puts its coverage
# instrumentation (sancov passes, sanitizer) into RUSTFLAGS for every crate. Building the AWS SDK,
# bollard, reqwest and aws-lc that the agent and coordinator link that way costs ~30 CPU minutes;
# here only the crates below are instrumented (the code under test and the parsers that read the
# fuzzed input), everything else is built plainly. libFuzzer then gets coverage from these
# crates only, which is what guides it anyway. `--cfg fuzzing` stays everywhere.
#
# Called as: rustc-wrapper.sh RUSTC ARGS...
set -euo pipefail

instrumented=" swarm_coordinator swarm_agent swarmstrap_wire coordinator_request agent_config \
wire_json toml toml_parser serde_json serde_urlencoded form_urlencoded "

crate=""
prev=""
for a in "$@"; do
    if [[ "$prev" == "--crate-name" ]]; then
        crate="$a"
        break
    fi
    prev="$a"
done

if [[ -z "$crate" || "$instrumented" == *" $crate "* ]]; then
    exec "$@"
fi

args=()
for a in "$@"; do
    case "$a" in
    -Cpasses=sancov-module | -Cllvm-args=-sanitizer-coverage-* | -Zsanitizer=* | -Csanitizer=*) ;;
    *) args+=("$a") ;;
    esac
done
exec "${args[@]}"
