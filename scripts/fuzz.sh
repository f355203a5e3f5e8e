#!/usr/bin/env bash
# Fuzz every parser that reads untrusted input, under libFuzzer on stable Rust.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]    # default: 60 s each, every target
#
# Targets (fuzz/src/lib.rs): gguf, safetensors, tokenizer, template, registry, openai.
# Builds fuzz/ with coverage instrumentation (stable rustc flags, no sanitizer: Rust
# code is memory-safe where it is not `unsafe`; what this finds is panics, aborts,
# stack overflows, hangs over 30 s and memory over 2 GB) into target/fuzz, then runs
# each target from its committed seeds (fuzz/seeds/<target>) and a growing corpus kept
# outside git (~/.cache/mlxengine/fuzz/<target>). Crashing inputs land in
# ~/.cache/mlxengine/fuzz/artifacts/<target>/; a summary line per target says how many
# inputs ran and what was found. Exit status 1 if any target found something.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
secs=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(gguf safetensors tokenizer template registry openai)

scripts/setup.sh >/dev/null
triple=$(rustc -vV | sed -n 's/^host: //p')
# What cargo-fuzz passes, minus the sanitizer: SanitizerCoverage's inline 8-bit
# counters, PC table and comparison tracing, with debug assertions and overflow checks
# on. An explicit --target keeps the flags off build scripts and proc macros.
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks --cfg fuzzing"
export CARGO_TARGET_DIR=target/fuzz
cargo build --release --locked -p mlxengine-fuzz --features libfuzzer --bins --target "$triple"
bin=target/fuzz/$triple/release

cache=${MLXENGINE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mlxengine}/fuzz
found=0
summary=()
for t in "${targets[@]}"; do
    corpus=$cache/$t
    artifacts=$cache/artifacts/$t/
    mkdir -p "$corpus" "$artifacts"
    log=$cache/$t.log
    echo "[fuzz] $t for $secs s (corpus $corpus)" >&2
    set +e
    "$bin/$t" -max_total_time="$secs" -timeout=30 -rss_limit_mb=2048 -malloc_limit_mb=2048 \
        -max_len=65536 -print_final_stats=1 -artifact_prefix="$artifacts" \
        "$corpus" "fuzz/seeds/$t" >"$log" 2>&1
    rc=$?
    set -e
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    crashes=$(find "$artifacts" -type f | wc -l)
    if [ "$rc" -ne 0 ]; then
        found=1
        what=$(grep -m1 -E '^==[0-9]+== ERROR|panicked at|deadly signal|out-of-memory|timeout' "$log" || echo "exit $rc")
        summary+=("$t: ${runs:-?} inputs, coverage ${cov:-?}, FOUND: $what (inputs in $artifacts; log $log)")
    else
        summary+=("$t: ${runs:-?} inputs in $secs s, coverage ${cov:-?}, corpus $(find "$corpus" -type f | wc -l) files, $crashes saved crash inputs")
    fi
done
printf '[fuzz] %s\n' "${summary[@]}" >&2
exit $found
