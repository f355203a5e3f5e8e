#!/usr/bin/env bash
# The portable build's ggml provider (x86-64-v3 code, llama.cpp CPU variant chosen at run
# time) against a native build of the same provider (-C target-cpu=native, llama.cpp with
# GGML_NATIVE, one variant), on this machine, in alternating rounds.
#   bench/native_vs_portable.sh NATIVE_PLUGIN_SO [prompt_tokens=128] [rounds=5]
# Make NATIVE_PLUGIN_SO from a checkout of 8ecd55a (the last native-only build):
#   CARGO_TARGET_DIR=/tmp/native-target cargo build --release -p mlxengine-llm-ggml
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
NATIVE=${1:?usage: bench/native_vs_portable.sh NATIVE_PLUGIN_SO [prompt_tokens] [rounds]}
P=${2:-128}
ROUNDS=${3:-5}
. bench/common.sh
cargo build --release --locked -q --workspace
nat=$(mktemp -d); trap 'rm -rf "$nat"' EXIT
cp target/release/mlxengine "$nat/"
cp "$NATIVE" "$nat/libmlxengine_llm_ggml.so"
export MLXENGINE_HOME=$nat
# Same context settings on both sides: the native build predates the settings and runs
# llama.cpp's defaults (flash attention "auto", i.e. on for CPU).
GGUF=$(ls "$CACHE"/models/smollm2-135m-instruct/*.gguf)
cat > "$nat/reg.toml" <<TOML
[[models]]
id = "smol-llama-defaults"
kind = "llm"
architecture = "llama"
source = { path = "$GGUF" }
[models.options]
flash_attn = "auto"
TOML
quiet_guard
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "portable: $(ggml_settings target/release/mlxengine --registry "$nat/reg.toml" smol-llama-defaults)"
run() { "$1" --registry "$nat/reg.toml" bench --model smol-llama-defaults --backend ggml --prompt-tokens "$P" --max-tokens 128 --runs 3 --json \
  | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["decode_tps"]["median"], d["prefill_tps"]["median"])'; }
rows=""
for r in $(seq "$ROUNDS"); do
  rows="$rows$(run target/release/mlxengine) $(run "$nat/mlxengine")
"
done
printf '%s' "$rows" | python3 -c '
import sys, statistics as st
rows = [list(map(float, l.split())) for l in sys.stdin if l.strip()]
for i, r in enumerate(rows, 1):
    print("  round %d: portable %.1f / %.1f, native %.1f / %.1f tok/s (decode / prefill)" % (i, *r))
print("portable / native: decode %.3f, prefill %.3f (median of per-round ratios)" % (
    st.median(r[0] / r[2] for r in rows), st.median(r[1] / r[3] for r in rows)))'
echo "(prompt $P tokens, 128 new, 3 runs per round; steal $(steal_since)%)$BENCH_FLAG"
