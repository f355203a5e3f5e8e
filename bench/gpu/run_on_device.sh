#!/usr/bin/env bash
# On the GPU machine (see BENCHMARKS.md): MLX's CUDA wheel swapped in under the binaries
# built on the CPU machine, random-weight models made there, our MLX provider and PyTorch
# transformers on the same GPU and weights.
#   bench/gpu/run_on_device.sh WHEEL BIN_DIR TOKENIZER_DIR OUT [MINILM_FILES_DIR]
# With MINILM_FILES_DIR (all-MiniLM-L6-v2's config, tokenizer and sentence-transformers
# files, no weights) the embedding benchmark runs too, on a BERT of that shape.
set -euo pipefail
WHEEL=$1 BIN=$2 TOK=$3 OUT=$4 MINILM=${5:-}
SITE=$(python3 -c 'import site; print(site.getsitepackages()[0])')
python3 -m zipfile -e "$WHEEL" "$SITE" >/dev/null
export LD_LIBRARY_PATH=$SITE/mlx/lib CUDA_HOME=/usr/local/cuda
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
WORK=$(mktemp -d)
python3 bench/gpu/make_models.py "$WORK" "$TOK" $MINILM
cat > "$WORK/models.toml" <<TOML
[[models]]
id = "llama-1b-shape"
kind = "llm"
architecture = "llama"
[models.source]
path = "$WORK/llama-1b-shape"
TOML
if [ -n "$MINILM" ]; then
  cat >> "$WORK/models.toml" <<TOML

[[models]]
id = "minilm-shape"
kind = "embed"
architecture = "bert"
[models.source]
path = "$WORK/minilm-shape"
TOML
fi
export MLXENGINE_HOME=$WORK
M="$BIN/mlxengine --plugin-dir $BIN --registry $WORK/models.toml"
$M device | tee "$OUT/device.txt"
$M bench --model llama-1b-shape --prompt-tokens 512 --max-tokens 128 --runs 3 --json | tee "$OUT/ours_llm.json"
python3 bench/gpu/torch_bench.py "$WORK/llama-1b-shape" | tee "$OUT/torch.txt"
if [ -n "$MINILM" ]; then
  $M bench-embed --model minilm-shape --batch 1,256 --runs 5 --json | tee "$OUT/ours_embed.json"
  python3 bench/gpu/torch_embed.py "$WORK/minilm-shape" | tee "$OUT/torch_embed.txt"
fi
