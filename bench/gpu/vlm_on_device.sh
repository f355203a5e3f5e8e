#!/usr/bin/env bash
# On the GPU machine: the vlm plugin on MLX CUDA beside transformers on CUDA, same
# SmolVLM-256M-shaped random weights (made there by bench/vlm_peer.py), same 512×512
# photograph, bfloat16 on both sides: time to first token and decode tok/s, three runs
# each after a warm-up in one process (`mlxengine bench --image`), ours before and after. STASH holds what the CPU machine built and
# packed: libmlx.so.xz.part.* (the CUDA wheel's libmlx.so, stripped, xz, split to fit the
# transfer), rest.tar.xz (bin/mlxengine, bin/libmlxengine_vlm.so, the wheel's include/ and
# mlx_cuda_13.libs/, astronaut.png).
# ARCH=qwen2_vl: Qwen2-VL-2B-shaped random bfloat16 weights instead (the photograph is
# 324 image tokens), and mlx-vlm on MLX CUDA beside transformers when the stash holds
# its wheels (wheels/: mlx's bindings, mlx-vlm and what it imports that the machine
# lacks, installed without their dependencies).
#   [ARCH=qwen2_vl] bench/gpu/vlm_on_device.sh STASH OUT [NEW_TOKENS]
set -euo pipefail
STASH=$1 OUT=$2 N=${3:-32} ARCH=${ARCH:-idefics3}
SITE=$(python3 -c 'import site; print(site.getsitepackages()[0])')
tar xJf "$STASH/rest.tar.xz" -C "$STASH"
# mlx's Python bindings (they load mlx/lib/libmlx.so, the CUDA one put there below).
if [ -d "$STASH/wheels" ]; then
  python3 -m pip install -q --no-deps --no-index "$STASH"/wheels/*.whl
fi
mkdir -p "$SITE/mlx/lib" "$OUT"
cat "$STASH"/libmlx.so.xz.part.* | xz -d > "$SITE/mlx/lib/libmlx.so"
cp -r "$STASH/include" "$SITE/mlx/"
cp -r "$STASH/mlx_cuda_13.libs" "$SITE/"
export LD_LIBRARY_PATH=$SITE/mlx/lib CUDA_HOME=/usr/local/cuda
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)' | tee -a "$OUT/gpu.txt"
WORK=$(mktemp -d)
case $ARCH in
  idefics3) MODEL=smolvlm-shaped; MAKE=make; RUN=run ;;
  qwen2_vl) MODEL=qwen2-vl-2b-shaped; MAKE=make-qwen; RUN=run-qwen ;;
  *) echo "ARCH must be idefics3 or qwen2_vl" >&2; exit 2 ;;
esac
python3 bench/vlm_peer.py $MAKE "$WORK/$MODEL" > /dev/null 2>>"$OUT/make.err"
printf '[[models]]\nid = "%s"\nkind = "vlm"\narchitecture = "%s"\nsource = { path = "%s" }\n' \
  "$MODEL" "$ARCH" "$WORK/$MODEL" > "$WORK/models.toml"
export MLXENGINE_HOME=$WORK
M="$STASH/bin/mlxengine --plugin-dir $STASH/bin --registry $WORK/models.toml"
$M device | tee "$OUT/device.txt"
# One process each side: a warm-up, then three timed runs (median, min–max); ours twice,
# before and after the peers.
ours() {
  $M bench --model "$MODEL" --dtype bfloat16 --image "$STASH/astronaut.png" \
    --prompt "Describe this image." --max-tokens "$N" --runs 3 --json 2>>"$OUT/ours.err"
}
ours | tee "$OUT/ours-1.json"
PEER_DEVICE=cuda PEER_DTYPE=bfloat16 python3 bench/vlm_peer.py $RUN \
  "$WORK/$MODEL" "$STASH/astronaut.png" "$N" 2>>"$OUT/peer.err" | tee "$OUT/transformers.json"
if [ "$ARCH" = qwen2_vl ] && python3 -c "import mlx_vlm" 2>>"$OUT/mlx-vlm.err"; then
  python3 bench/vlm_peer.py run-mlx-vlm "$WORK/$MODEL-flat" "$STASH/astronaut.png" "$N" \
    2>>"$OUT/mlx-vlm.err" | tee "$OUT/mlx-vlm.json"
fi
ours | tee "$OUT/ours-2.json"
