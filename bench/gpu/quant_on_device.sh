#!/usr/bin/env bash
# On the GPU machine: decode and prefill of our MLX provider at bfloat16, 4 bits and mxfp4
# (checkpoints `mlxengine quantize` writes there; 4-bit with and without a q8_0 KV cache),
# next to mlx-lm on the same checkpoints, on a random-weight model of Llama-3.2-1B's shape.
# IDS / KV_GROUPS pick rows (default: all).
#   bench/gpu/quant_on_device.sh BIN_DIR TOKENIZER_DIR OUT
# BIN_DIR holds mlxengine and the MLX plugins built on the CPU machine; MLX's CUDA wheel,
# the mlx Python bindings and mlx-lm must be installed in python3's site-packages (MLX's
# libmlx.so then finds the image's NVIDIA libraries through its RPATH).
set -euo pipefail
BIN=$1 TOK=$2 OUT=$3
SITE=$(python3 -c 'import site; print(site.getsitepackages()[0])')
export LD_LIBRARY_PATH=$SITE/mlx/lib CUDA_HOME=/usr/local/cuda
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
WORK=$(mktemp -d)
python3 bench/gpu/make_models.py "$WORK" "$TOK"
export MLXENGINE_HOME=$WORK
M="$BIN/mlxengine --plugin-dir $BIN --registry $WORK/models.toml"
cat > "$WORK/models.toml" <<TOML
[[models]]
id = "bf16"
kind = "llm"
architecture = "llama"
source = { path = "$WORK/llama-1b-shape" }

[[models]]
id = "q4"
kind = "llm"
architecture = "llama"
source = { path = "$WORK/llama-1b-q4" }

[[models]]
id = "mxfp4"
kind = "llm"
architecture = "llama"
source = { path = "$WORK/llama-1b-mxfp4" }

[[models]]
id = "q4-kv8"
kind = "llm"
architecture = "llama"
kv_cache = "q8_0"
source = { path = "$WORK/llama-1b-q4" }
TOML
$M quantize "$WORK/llama-1b-shape" -o "$WORK/llama-1b-q4" --bits 4 --group-size 64 --json | tee "$OUT/quantize.json"
$M quantize "$WORK/llama-1b-shape" -o "$WORK/llama-1b-mxfp4" --mode mxfp4 --json | tee "$OUT/quantize_mxfp4.json"
$M device | tee "$OUT/device.txt"
for id in ${IDS:-bf16 q4 mxfp4 q4-kv8}; do
  $M bench --model $id --prompt-tokens 512 --max-tokens 128 --runs 3 --json > "$OUT/ours_$id.json"
  python3 -c "import json,sys; b=json.load(open(sys.argv[1])); print('OURS', sys.argv[2], 'decode', b['decode_tps']['median'], 'prefill', b['prefill_tps']['median'], 'peak', b['peak_memory_bytes']['median'])" "$OUT/ours_$id.json" $id
done
python3 bench/gpu/mlx_lm_bench.py "$WORK/llama-1b-shape" | tee "$OUT/mlx_lm_bf16.txt"
python3 bench/gpu/mlx_lm_bench.py "$WORK/llama-1b-q4" | tee "$OUT/mlx_lm_q4.txt"
python3 bench/gpu/mlx_lm_bench.py "$WORK/llama-1b-mxfp4" | tee "$OUT/mlx_lm_mxfp4.txt"
# mlx-lm's quantized KV cache at our grouping (32) and at its default (64): its
# quantized_matmul may have no CUDA kernel for a shape; the error is the figure then.
for g in ${KV_GROUPS:-32 64}; do
  python3 bench/gpu/mlx_lm_bench.py "$WORK/llama-1b-q4" 8 $g 2>&1 | tail -1 | tee "$OUT/mlx_lm_q4_kv8_g$g.txt" || true
done
