#!/usr/bin/env bash
# On the GPU machine: the vlm plugin on MLX CUDA beside transformers on CUDA, same
# SmolVLM-256M-shaped random weights (made there by bench/vlm_peer.py), same 512×512
# photograph, bfloat16 on both sides: time to first token and decode tok/s, three runs
# each after a warm-up in one process (`mlxengine bench --image`), ours before and after. STASH holds what the CPU machine built and
# packed: libmlx.so.xz.part.* (the CUDA wheel's libmlx.so, stripped, xz, split to fit the
# transfer), rest.tar.xz (bin/mlxengine, bin/libmlxengine_vlm.so, the wheel's include/ and
# mlx_cuda_13.libs/, astronaut.png).
#   bench/gpu/vlm_on_device.sh STASH OUT [NEW_TOKENS]
set -euo pipefail
STASH=$1 OUT=$2 N=${3:-32}
SITE=$(python3 -c 'import site; print(site.getsitepackages()[0])')
mkdir -p "$SITE/mlx/lib" "$OUT"
cat "$STASH"/libmlx.so.xz.part.* | xz -d > "$SITE/mlx/lib/libmlx.so"
tar xJf "$STASH/rest.tar.xz" -C "$STASH"
cp -r "$STASH/include" "$SITE/mlx/"
cp -r "$STASH/mlx_cuda_13.libs" "$SITE/"
export LD_LIBRARY_PATH=$SITE/mlx/lib CUDA_HOME=/usr/local/cuda
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)' | tee -a "$OUT/gpu.txt"
WORK=$(mktemp -d)
python3 bench/vlm_peer.py make "$WORK/smolvlm-shaped" > /dev/null 2>&1
printf '[[models]]\nid = "smolvlm-shaped"\nkind = "vlm"\narchitecture = "idefics3"\nsource = { path = "%s" }\n' \
  "$WORK/smolvlm-shaped" > "$WORK/models.toml"
export MLXENGINE_HOME=$WORK
M="$STASH/bin/mlxengine --plugin-dir $STASH/bin --registry $WORK/models.toml"
$M device | tee "$OUT/device.txt"
# One process each side: a warm-up, then three timed runs (median, min–max); ours twice,
# before and after transformers.
ours() {
  $M bench --model smolvlm-shaped --dtype bfloat16 --image "$STASH/astronaut.png" \
    --prompt "Describe this image." --max-tokens "$N" --runs 3 --json 2>>"$OUT/ours.err"
}
ours | tee "$OUT/ours-1.json"
PEER_DEVICE=cuda PEER_DTYPE=bfloat16 python3 bench/vlm_peer.py run \
  "$WORK/smolvlm-shaped" "$STASH/astronaut.png" "$N" 2>>"$OUT/peer.err" | tee "$OUT/transformers.json"
ours | tee "$OUT/ours-2.json"
