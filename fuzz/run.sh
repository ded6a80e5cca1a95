#!/usr/bin/env bash
# `make fuzz`: runs every cargo-fuzz target for FUZZ_SECONDS (default 30) each, starting from
# the committed seeds plus whatever earlier runs kept in fuzz/corpus, and prints the executions
# per target. Any crash stops the run with the target's artifact path; turn it into a unit test.
set -euo pipefail
cd "$(dirname "$0")"
secs="${FUZZ_SECONDS:-30}"
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "make fuzz: cargo-fuzz needs a nightly Rust toolchain and none is installed" >&2
    echo "           (rustup toolchain install nightly); nothing was fuzzed" >&2
    exit 1
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "make fuzz: installing cargo-fuzz" >&2
    cargo install cargo-fuzz
fi
targets="${FUZZ_TARGETS:-$(cargo +nightly fuzz list)}"
cargo +nightly fuzz build -O
mkdir -p artifacts
summary=()
for t in $targets; do
    mkdir -p "corpus/$t"
    log="artifacts/$t.log"
    echo "== $t: ${secs}s"
    # -rss_limit_mb: a parser that allocates what a length field claims must fail here.
    if ! cargo +nightly fuzz run -O "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=1024 -timeout=10 -print_final_stats=1 \
        >"$log" 2>&1; then
        tail -40 "$log" >&2
        echo "make fuzz: $t failed; the crashing input is under fuzz/artifacts/$t/" >&2
        exit 1
    fi
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
    summary+=("$t: $runs executions in ${secs}s")
done
printf '%s\n' "${summary[@]}"
