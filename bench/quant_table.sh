#!/usr/bin/env bash
# What each quantization setting costs on this machine, in one run: size, perplexity on
# the committed evaluation text and its change against float32, decode tokens/s — for
# SmolLM2-135M and Gemma 3 270M at float32, bfloat16, MLX affine 8/6/4/3 bits at groups
# 32/64/128, and GGUF Q8_0/Q6_K/Q5_K_M/Q4_K_M/Q4_0 from llama.cpp's quantizer, with
# llama.cpp's own `llama-perplexity` on the same GGUF files beside ours (bench/quant_table.py).
# The quantized checkpoints are made once into $CACHE/bench/quant.
#   bench/quant_table.sh [ctx=512] [decode_tokens=64] [chunks=0: the whole text]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
CTX=${1:-512}
N=${2:-64}
CHUNKS=${3:-0}
. bench/common.sh
scripts/setup.sh
cargo build --release --locked -q --workspace  # as scripts/test.sh: one llama.cpp build
ensure_llama_perplexity
home=$(mktemp -d); trap 'rm -rf "$home"' EXIT
export MLXENGINE_HOME=$home
quiet_guard
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)$BENCH_FLAG"
python3 bench/quant_table.py target/release/mlxengine "$LLAMA_PERPLEXITY" "$CACHE/bench/quant" \
  tests/fixtures/eval/us-founding-texts.txt "$CTX" "$N" "$THREADS" "$CHUNKS"
