#!/usr/bin/env bash
# Decode/prefill speed of MLXEngine's llm plugin next to mlx-lm on the same weights and
# machine, in one run. mlx-lm (pinned) is installed into a cache venv; both use MLX 0.32.4
# on CPU with OpenBLAS. Weights: the default model's GGUF dequantized to float32 by
# `mlxengine import` (mlx-lm does not read GGUF), so both run identical f32 weights.
#   bench/llm_decode.sh [max_tokens=128] [runs=3]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
N=${1:-128}
RUNS=${2:-3}
CACHE=${MLXENGINE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mlxengine}
scripts/setup.sh
cargo build --release --locked -q -p mlxengine -p mlxengine-llm
VENV=$CACHE/bench-venv
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import mlx_lm" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "mlx[cpu]==0.32.4" "mlx-lm==0.32.2"
fi
HF=$CACHE/bench/smollm2-135m-instruct-f32
if [ ! -d "$HF" ]; then
  mkdir -p "$(dirname "$HF")"
  target/release/mlxengine import "$CACHE"/models/smollm2-135m-instruct/*.gguf "$HF" >/dev/null
fi
OPENBLAS=$(ls /usr/lib/*/openblas-pthread/libblas.so.3 | head -1)
PROMPT="Write a long story about a lighthouse keeper who finds a message in a bottle."
home=$(mktemp -d); trap 'rm -rf "$home"' EXIT
export MLXENGINE_HOME=$home
target/release/mlxengine add --id bench-f32 --kind llm --architecture llama --path "$HF" >/dev/null

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "model: SmolLM2-135M-Instruct (f32), chat prompt, greedy, $N new tokens, $RUNS runs (median)"
ours=$(target/release/mlxengine bench --model bench-f32 --chat --prompt "$PROMPT" --max-tokens "$N" --runs "$RUNS" --json)
od=$(echo "$ours" | python3 -c 'import json,sys; print(json.load(sys.stdin)["decode_tps"]["median"])')
op=$(echo "$ours" | python3 -c 'import json,sys; print(json.load(sys.stdin)["prefill_tps"]["median"])')
peer=$(LD_PRELOAD=$OPENBLAS "$VENV/bin/python" - "$HF" "$N" "$RUNS" "$PROMPT" <<'PY'
import sys, statistics
from mlx_lm import load, stream_generate
path, n, runs, prompt = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
model, tok = load(path)
text = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
dec, pre = [], []
for _ in stream_generate(model, tok, text, max_tokens=8):  # warm-up, as ours
    pass
for _ in range(runs):
    last = None
    for r in stream_generate(model, tok, text, max_tokens=n):
        last = r
    dec.append(last.generation_tps); pre.append(last.prompt_tps)
print(statistics.median(dec), statistics.median(pre))
PY
)
pd=${peer% *}; pp=${peer#* }
printf '%-28s %12s %12s\n' "" "decode tok/s" "prefill tok/s"
printf '%-28s %12.1f %12.1f\n' "MLXEngine (mlx-llm plugin)" "$od" "$op"
printf '%-28s %12.1f %12.1f\n' "mlx-lm 0.32.2" "$pd" "$pp"
printf '%-28s %12.2f %12.2f\n' "ratio (ours / mlx-lm)" "$(echo "$od / $pd" | bc -l)" "$(echo "$op / $pp" | bc -l)"
