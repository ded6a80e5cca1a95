#!/usr/bin/env bash
# `make fuzz`: runs every cargo-fuzz target for FUZZ_SECONDS (default 30) each, starting from
# the committed seeds in fuzz/seeds (never written to) plus the corpus in FUZZ_CORPUS (default
# fuzz/corpus, kept between runs; CI passes a throwaway directory), and prints the executions
# per target. Any crash, timeout or out-of-memory fails the run with the target's artifact
# path; turn it into a unit test. FUZZ_TARGETS picks targets, FUZZ_TOOLCHAIN a toolchain.
set -euo pipefail
corpus="${FUZZ_CORPUS:-$(dirname "$0")/corpus}"
mkdir -p "$corpus"
corpus="$(cd "$corpus" && pwd)"
cd "$(dirname "$0")"
secs="${FUZZ_SECONDS:-30}"
# cargo-fuzz builds with -Z flags (sanitizer, coverage). Nightly takes them; stable ships the
# same sanitizer runtimes and takes them under RUSTC_BOOTSTRAP=1, so a machine with only
# stable (CI) can fuzz too.
toolchain="${FUZZ_TOOLCHAIN:-}"
if [ -z "$toolchain" ]; then
    if cargo +nightly --version >/dev/null 2>&1; then toolchain=nightly; else toolchain=stable; fi
fi
case "$toolchain" in
nightly*) ;;
*)
    echo "make fuzz: using the $toolchain toolchain with RUSTC_BOOTSTRAP=1 (no nightly)" >&2
    export RUSTC_BOOTSTRAP=1
    ;;
esac
cargo=(cargo "+$toolchain")
"${cargo[@]}" --version >&2
if ! "${cargo[@]}" fuzz --version >/dev/null 2>&1; then
    echo "make fuzz: installing cargo-fuzz" >&2
    "${cargo[@]}" install cargo-fuzz --locked
fi
targets="${FUZZ_TARGETS:-$("${cargo[@]}" fuzz list)}"
"${cargo[@]}" fuzz build -O
mkdir -p artifacts
summary=()
for t in $targets; do
    mkdir -p "$corpus/$t"
    log="artifacts/$t.log"
    echo "== $t: ${secs}s"
    # -rss_limit_mb: a parser that allocates what a length field claims must fail here.
    if ! "${cargo[@]}" fuzz run -O "$t" "$corpus/$t" "seeds/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=1024 -timeout=10 -print_final_stats=1 \
        >"$log" 2>&1; then
        # The cause (panic message or sanitizer report), then how to reproduce it.
        grep -E -m3 -A3 'panicked at|==ERROR|ERROR: libFuzzer' "$log" >&2 || true
        tail -25 "$log" >&2
        echo "make fuzz: $t failed; the crashing input is under fuzz/artifacts/$t/" >&2
        exit 1
    fi
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
    summary+=("$t: $runs executions in ${secs}s")
    echo "   ${summary[-1]}"
done
printf '%s\n' "${summary[@]}"
