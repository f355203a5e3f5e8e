#!/usr/bin/env bash
# On the GPU machine: greedy decode of our MLX provider with two builds of the llm plugin
# side by side (A: the host samples each token before the next step is built; B: greedy
# picks on the device, step t+1 queued before the host waits for step t), on a random-weight
# Llama of Llama-3.2-1B's shape in bfloat16, alternating rounds; and whether both give the
# same tokens.
#   bench/gpu/pipeline_on_device.sh BIN_A BIN_B TOKENIZER_DIR OUT [PEER_WHEELS]
# With PEER_WHEELS (a folder with the `mlx` Python wheels 0.32.4 for python3's version and
# mlx-lm 0.32.2's, carried), mlx-lm runs the same model in each round.
# Each BIN holds mlxengine and the MLX llm plugin built on the CPU machine; MLX's CUDA
# wheel unpacked into python3's site-packages (see docs/mlx-on-linux.md).
set -euo pipefail
A=$1 B=$2 TOK=$3 OUT=$4 PEER=${5:-}
SITE=$(python3 -c 'import site; print(site.getsitepackages()[0])')
export LD_LIBRARY_PATH=$SITE/mlx/lib CUDA_HOME=/usr/local/cuda
if [ -n "$PEER" ]; then
  V=$(python3 -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')
  python3 -m pip install -q --no-deps --no-index "$PEER"/mlx-0.32.4-cp$V-*.whl "$PEER"/mlx_lm-*.whl
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
WORK=$(mktemp -d)
python3 bench/gpu/make_models.py "$WORK" "$TOK"
export MLXENGINE_HOME=$WORK/home
printf '[[models]]\nid = "bf16"\nkind = "llm"\narchitecture = "llama"\nsource = { path = "%s" }\n' "$WORK/llama-1b-shape" > "$WORK/models.toml"
for v in A B; do
  bin=${!v}
  "$bin/mlxengine" --plugin-dir "$bin" --registry "$WORK/models.toml" generate --model bf16 \
    --temperature 0 --max-tokens 64 --json "The capital of France is" > "$OUT/ids_$v.json"
done
python3 - "$OUT" <<'PY'
import json, sys
a, b = (json.load(open(f"{sys.argv[1]}/ids_{v}.json")) for v in "AB")
ta, tb = a["token_ids"], b["token_ids"]
print(f"SAME {len(ta)} TOKENS" if ta == tb else f"DIFFER: {ta} vs {tb}")
PY
for r in 1 2 3; do
  for v in A B; do
    bin=${!v}
    for p in 128 512; do
      "$bin/mlxengine" --plugin-dir "$bin" --registry "$WORK/models.toml" bench --model bf16 \
        --prompt-tokens $p --max-tokens 128 --runs 3 --json > "$OUT/bench_${v}_${p}_$r.json"
      python3 -c "import json,sys; b=json.load(open(sys.argv[1])); print(sys.argv[2], 'prompt', sys.argv[3], 'round', sys.argv[4], *[f'{k} {v[\"median\"]:.1f}' for k, v in b.items() if isinstance(v, dict) and 'median' in v])" "$OUT/bench_${v}_${p}_$r.json" $v $p $r
    done
  done
  [ -z "$PEER" ] || python3 bench/gpu/mlx_lm_bench.py "$WORK/llama-1b-shape" | tail -1
done
