#!/usr/bin/env bash
# The MLX provider behind the server on this CPU: aggregate tokens/s, time to first token
# and inter-token latency for 1, 4 and 8 concurrent streaming clients (unique ~130-token
# chat prompts, greedy; bench/server_load.py) on SmolLM2-135M imported to a float32 Hub
# folder (safetensors: only the MLX provider serves it). With OTHER_PLUGIN_DIR (another
# build of the llm plugin, e.g. one from before continuous batching), the same load runs
# on it too, alternating rounds.
#   bench/mlx_batching.sh [MAX_TOKENS] [REQUESTS_PER_CLIENT] [OTHER_PLUGIN_DIR] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-32} R=${2:-2} OTHER=${3:-} ROUNDS=${4:-2}
. bench/common.sh
scripts/setup.sh
cargo build --release --locked -q --workspace
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
GGUF=$(ls "$CACHE"/models/smollm2-135m-instruct/*.gguf)
MLXENGINE_HOME=$WORK/home target/release/mlxengine import "$GGUF" "$WORK/smol-f32" >/dev/null
printf '[[models]]\nid = "smol-mlx"\nkind = "llm"\narchitecture = "llama"\nsource = { path = "%s" }\n' \
  "$WORK/smol-f32" >"$WORK/models.toml"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
quiet_guard
run() {  # run LABEL PLUGIN_DIR
  start_server --plugin-dir "$2" --registry "$WORK/models.toml" --preload smol-mlx
  echo "== $1 ($2)"
  python3 bench/server_load.py "$SERVER_URL" smol-mlx "$N" 1,4,8 "$R" unique | tee -a "$WORK/$1.txt" | sed -n 1,4p
  kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
}
for r in $(seq "$ROUNDS"); do
  run this target/release
  [ -z "$OTHER" ] || run other "$OTHER"
done
echo "(steal $(steal_since)% of CPU time during the run)$BENCH_FLAG"
rm -rf "$WORK"
