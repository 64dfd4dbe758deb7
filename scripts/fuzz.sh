#!/usr/bin/env bash
# Fuzz every cargo-fuzz target in fuzz/ for SECONDS_PER_TARGET seconds each (default 20), starting
# from the committed seed corpora. Exits non-zero when a target finds a crash (the input is kept
# in fuzz/artifacts/<target>/, which is not committed). See fuzz/README.md.
#
#   bash scripts/fuzz.sh                  # CI: 20 s per target
#   bash scripts/fuzz.sh 300              # by hand: 5 min per target
#   FUZZ_ASAN=1 bash scripts/fuzz.sh 300  # the same with AddressSanitizer over every crate
set -euo pipefail
cd "$(dirname "$0")/.."

SECS="${1:-20}"
# 0.13.2 builds with rustc 1.95 (`cargo install --locked`).
CARGO_FUZZ_VERSION=0.13.2

# cargo-fuzz passes nightly-only flags (sancov passes, -Zsanitizer); we build with stable rustc,
# which accepts them with RUSTC_BOOTSTRAP=1.
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz $CARGO_FUZZ_VERSION" >&2
    # A thin command-line tool: --debug builds it in half the time of a release build.
    cargo install cargo-fuzz --locked --debug --version "$CARGO_FUZZ_VERSION"
fi

# Build mode. Both use `--dev` (fuzz/Cargo.toml's dev profile): cargo-fuzz's release mode forces
# one codegen unit per crate and optimizes everything the agent and coordinator link (AWS SDK,
# bollard, reqwest, aws-lc): about an hour on our 2-core machine.
if [[ "${FUZZ_ASAN:-}" == 1 ]]; then
    # AddressSanitizer and coverage over every crate. Stable's rust-std ships the ASan runtime
    # (librustc-stable_rt.asan.a), so this links without -Zbuild-std. Builds in ~8 min here, but
    # the coordinator target runs ~10x fewer inputs per second: for long runs by hand.
    FLAGS=(--dev --sanitizer address --target-dir fuzz/target/asan)
    unset RUSTC_WRAPPER
else
    # CI: no sanitizer, coverage only for the code under test and the parsers of the input
    # (fuzz/rustc-wrapper.sh); builds in ~4 min. Our crates forbid `unsafe`, so ASan would watch
    # only dependencies; the properties the targets assert are the point of this run. The --cfg
    # names the wrapper's content, so editing it rebuilds.
    FLAGS=(--dev --sanitizer none --target-dir fuzz/target/quick)
    export RUSTC_WRAPPER="$PWD/fuzz/rustc-wrapper.sh"
    export RUSTFLAGS="${RUSTFLAGS:-} --cfg swarmstrap_fuzz_wrapper=\"$(sha256sum fuzz/rustc-wrapper.sh | cut -c1-16)\""
fi

# The fuzzed crates build with the versions the root Cargo.lock pins (what we ship); cargo adds
# libFuzzer's own dependencies. fuzz/Cargo.lock is derived, hence gitignored.
cp Cargo.lock fuzz/Cargo.lock

TARGETS=$(cargo fuzz list)
start=$SECONDS
echo "== cargo fuzz build ${FLAGS[*]}: $(echo $TARGETS)" >&2
cargo fuzz build "${FLAGS[@]}"
echo "== fuzz targets built in $((SECONDS - start)) s" >&2

# New corpus entries go to a temp dir (libFuzzer writes to the first corpus dir), so a run never
# dirties fuzz/corpus.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

failed=()
for t in $TARGETS; do
    mkdir -p "$work/$t"
    args=(-max_total_time="$SECS" -timeout=20 -rss_limit_mb=4096 -print_final_stats=1)
    if [[ -f "fuzz/$t.dict" ]]; then
        args+=(-dict="fuzz/$t.dict")
    fi
    echo "== fuzz $t for $SECS s" >&2
    t0=$SECONDS
    # libFuzzer logs every new coverage point; keep that out of the CI log unless it fails.
    if cargo fuzz run "${FLAGS[@]}" "$t" "$work/$t" "fuzz/corpus/$t" -- "${args[@]}" \
        >"$work/$t.log" 2>&1; then
        grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb)' "$work/$t.log" >&2 || true
        echo "== $t: no failure in $((SECONDS - t0)) s ($(find "$work/$t" -type f | wc -l) new corpus entries, not kept)" >&2
    else
        {
            grep -E -A12 'panicked at|ERROR: (libFuzzer|AddressSanitizer|LeakSanitizer)' "$work/$t.log" |
                head -n 60 || tail -n 60 "$work/$t.log"
            grep -E '^(SUMMARY|artifact_prefix|Base64):' "$work/$t.log" || true
        } >&2
        echo "== $t: FAILED; the input is in fuzz/artifacts/$t/; reproduce with" >&2
        echo "   ${FLAGS[-1]}/x86_64-unknown-linux-gnu/debug/$t fuzz/artifacts/$t/<file>" >&2
        failed+=("$t")
    fi
done

echo "== fuzz: $((SECONDS - start)) s in all" >&2
if ((${#failed[@]})); then
    echo "== fuzz: failures in: ${failed[*]}" >&2
    exit 1
fi
