#!/usr/bin/env bash
# On the GPU machine: the diffusion plugin on MLX CUDA against diffusers on CUDA (float16
# both), random weights of SD 1.5's shapes at 512×512 and SDXL's at 1024×1024 made there by
# bench/diffusion_peer.py; 20 Euler steps, guidance 7.5; each side one process, a 2-step
# warm-up then RUNS runs; ours before and after the peer.
# STASH holds what the CPU machine packed: libmlx.so.xz.part.* (the CUDA wheel's libmlx.so,
# xz, split to fit the transfers), rest.tar.xz (bin/mlxengine, bin/libmlxengine_diffusion.so,
# the wheel's include/ and mlx_cuda_13.libs/, wheels/ with diffusers when the machine
# lacks it).
#   bench/gpu/diffusion_on_device.sh STASH OUT sd15|sdxl [RUNS]
set -euo pipefail
STASH=$1 OUT=$2 KIND=$3 RUNS=${4:-3}
SITE=$(python3 -c 'import site; print(site.getsitepackages()[0])')
mkdir -p "$OUT" "$SITE/mlx/lib"
if [ ! -f "$SITE/mlx/lib/libmlx.so" ]; then
  tar xJf "$STASH/rest.tar.xz" -C "$STASH"
  cat "$STASH"/libmlx.so.xz.part.* | xz -d > "$SITE/mlx/lib/libmlx.so"
  cp -r "$STASH/include" "$SITE/mlx/"
  cp -r "$STASH/mlx_cuda_13.libs" "$SITE/"
  if [ -d "$STASH/wheels" ] && ! python3 -c "import diffusers" 2>/dev/null; then
    python3 -m pip install -q --no-deps --no-index "$STASH"/wheels/*.whl
  fi
fi
export LD_LIBRARY_PATH=$SITE/mlx/lib CUDA_HOME=/usr/local/cuda
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c 'import torch, diffusers; print("torch", torch.__version__, "diffusers", diffusers.__version__)' | tee -a "$OUT/gpu.txt"
WORK=/tmp/diffusion-bench
mkdir -p "$WORK"
case $KIND in
  sd15) SIZE=512x512; ARCH=stable_diffusion ;;
  sdxl) SIZE=1024x1024; ARCH=stable_diffusion_xl ;;
  *) echo "KIND must be sd15 or sdxl" >&2; exit 2 ;;
esac
[ -f "$WORK/$KIND/model_index.json" ] || python3 bench/diffusion_peer.py make "$KIND" "$WORK/$KIND" 2>>"$OUT/make.err"
printf '[[models]]\nid = "%s-shaped"\nkind = "diffusion"\narchitecture = "%s"\nsource = { path = "%s" }\n' \
  "$KIND" "$ARCH" "$WORK/$KIND" > "$WORK/models.toml"
export MLXENGINE_HOME=$WORK
M="$STASH/bin/mlxengine --plugin-dir $STASH/bin --registry $WORK/models.toml"
$M device | tee "$OUT/device.txt"
# Peak GPU memory of each side: nvidia-smi sampled every 100 ms while it runs (both
# allocators keep what they took, so this is what the process held).
peak() {
  local log=$1; shift
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "$log" &
  local mon=$!
  "$@"
  kill $mon 2>/dev/null || true
  echo "peak GPU memory $(sort -n "$log" | tail -1) MiB (idle $(head -1 "$log") MiB)" > "$log.txt"
  cat "$log.txt" >&2
}
ours() {
  $M bench-image --model "$KIND-shaped" --size $SIZE --steps 20 --runs "$RUNS" --json 2>>"$OUT/ours.err"
}
peak "$OUT/mem-ours-$KIND-1" ours | tee "$OUT/ours-$KIND-1.json"
peak "$OUT/mem-diffusers-$KIND" python3 bench/diffusion_peer.py run "$WORK/$KIND" $SIZE 20 "$RUNS" 2>>"$OUT/peer.err" | tee "$OUT/diffusers-$KIND.json"
peak "$OUT/mem-ours-$KIND-2" ours | tee "$OUT/ours-$KIND-2.json"
