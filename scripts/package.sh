#!/usr/bin/env bash
# Copy a release build into one relocatable folder that runs on any x86-64-v3 Linux
# machine (no Rust, no cache, no LD_LIBRARY_PATH needed):
#   DIR/mlxengine                      the host
#   DIR/plugins/libmlxengine_*.so      the plugins (found beside the binary)
#   DIR/plugins/lib{llama,ggml*}.so.*  llama.cpp's shared libraries and its CPU backend
#                                      variants (the ggml plugin loads the best one)
#   DIR/plugins/mlx/lib/libmlx.so      MLX from the pinned CPU wheel (the MLX plugins'
#   DIR/mlx_cpu.libs/                  $ORIGIN/mlx/lib rpath; the wheel's own BLAS/LAPACK,
#                                      where libmlx's $ORIGIN/../../mlx_cpu.libs finds them)
# On a GPU machine, replace plugins/mlx/lib/libmlx.so with a CUDA wheel's (docs/mlx-on-linux.md).
#   scripts/package.sh DIR       (after cargo build --release --workspace)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DIR=${1:?usage: scripts/package.sh DIR}
CACHE=${MLXENGINE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mlxengine}
REL=target/release
[ -x "$REL/mlxengine" ] || { echo "no $REL/mlxengine: run cargo build --release --workspace" >&2; exit 1; }
tmp="$DIR.partial.$$"
rm -rf "$tmp"
mkdir -p "$tmp/plugins/mlx/lib" "$tmp/mlx_cpu.libs"
cp "$REL/mlxengine" "$tmp/"
cp "$REL"/libmlxengine_{llm,llm_ggml,embed,quant}.so "$tmp/plugins/"
# llama.cpp: the shared libraries under the names the plugin links (their sonames), and
# the CPU backend variants, from the build's install folder.
out=$(dirname "$(ls -d "$REL"/build/llama-cpp-sys-2-*/out/backends | head -1)")
for lib in $(readelf -d "$REL/libmlxengine_llm_ggml.so" | sed -n 's/.*NEEDED.*\[\(lib\(llama\|ggml\)[^]]*\)\]/\1/p'); do
  cp -L "$out/lib/$lib" "$tmp/plugins/$lib"
done
for lib in $(readelf -d "$out"/lib/libllama.so "$out"/lib/libggml.so | sed -n 's/.*NEEDED.*\[\(libggml[^]]*\)\]/\1/p' | sort -u); do
  [ -e "$tmp/plugins/$lib" ] || cp -L "$out/lib/$lib" "$tmp/plugins/$lib"
done
cp "$out"/backends/libggml-cpu-*.so "$tmp/plugins/"
# MLX (CPU wheel) with the wheel's own BLAS (netlib; setup.sh points the cache's copy at
# the system's OpenBLAS, which another machine may not have).
MLX_DIR="$CACHE/mlx/mlx-cpu-0.32.4"
cp "$MLX_DIR/mlx/lib/libmlx.so" "$tmp/plugins/mlx/lib/"
for f in "$MLX_DIR"/mlx_cpu.libs/*; do
  case "$f" in
    *.netlib) cp "$f" "$tmp/mlx_cpu.libs/$(basename "${f%.netlib}")" ;;
    *) [ -L "$f" ] && [ -e "$f.netlib" ] || cp -L "$f" "$tmp/mlx_cpu.libs/" ;;
  esac
done
rm -rf "$DIR"
mv "$tmp" "$DIR"
echo "packaged into $DIR ($(du -sh "$DIR" | cut -f1))"
