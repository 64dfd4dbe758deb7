#!/usr/bin/env bash
# RUSTC_WRAPPER for the quick fuzz build (scripts/fuzz.sh): cargo-fuzz puts its coverage
# instrumentation (sancov passes with comparison tracing, sanitizer) into RUSTFLAGS for every
# crate, so every comparison in tokio, hyper, redb … calls into libFuzzer: the coordinator target
# then runs ~10x fewer inputs per second. Here only the crates below are instrumented (the code
# under test and the parsers that read the fuzzed input; generic code they instantiate, e.g.
# axum's, is instrumented with them); everything else is built plainly. `--cfg fuzzing` stays.
#
# Called as: rustc-wrapper.sh RUSTC ARGS...
set -euo pipefail

instrumented=" swarm_coordinator swarm_agent swarmstrap_wire coordinator_request agent_config doc_rules \
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
