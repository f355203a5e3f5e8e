#!/usr/bin/env bash
# The main job on a fresh machine: set up (idempotent), build the host and plugins, then
# chat with the default model (SmolLM2-135M-Instruct) on the fastest provider for this
# machine (the ggml one on CPU-only machines, MLX on a GPU; it says which), and embed a
# few sentences with the default embedding model on its fastest provider (ggml on CPU).
#   scripts/demo.sh                      # a one-shot answer + embeddings
#   scripts/demo.sh "Your question"      # ask your own question
#   scripts/demo.sh --chat               # interactive multi-turn chat
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
# The whole workspace, as scripts/test.sh builds it: a different package selection changes
# feature unification and makes cargo build llama.cpp a second time.
cargo build --release --locked --workspace
bin=target/release/mlxengine
if [ "${1:-}" = "--chat" ]; then
  exec "$bin" chat
fi
"$bin" plugins
echo
question=${1:-What is the capital of France? Answer in one sentence, then name two famous places there.}
"$bin" info smollm2-135m-instruct | grep -E 'served by|score' || true
echo
echo "> $question"
"$bin" generate --chat --max-tokens 96 "$question"
echo
"$bin" embed --model all-minilm-l6-v2 \
  "A man is eating food." \
  "A man is eating a piece of bread." \
  "The girl is carrying a baby."
