# Sourced by the bench scripts: the cache, the peers' pinned venvs (installed on first
# use, from PyPI, into the cache) and the thread count peers are given.

CACHE=${MLXENGINE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mlxengine}
VENV=$CACHE/bench-venv
ST_VENV=$CACHE/st-venv
# Physical cores (what MLXEngine's providers use), logical ones where unknown.
THREADS=$(grep -E '^core id' /proc/cpuinfo | sort -u | wc -l)
[ "$THREADS" -gt 0 ] || THREADS=$(nproc)

# mlx-lm 0.32.2 on mlx-cpu 0.32.4, llama-cpp-python 0.3.36 built from its sdist with
# native flags, matplotlib (charts).
ensure_bench_venv() {
  "$VENV/bin/python" -c "import mlx_lm, llama_cpp, matplotlib" 2>/dev/null && return
  echo "[bench] installing mlx-lm, llama-cpp-python (from its sdist), matplotlib into $VENV" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "mlx[cpu]==0.32.4" "mlx-lm==0.32.2" "matplotlib==3.10.7"
  CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_CURL=OFF" "$VENV/bin/pip" install -q \
    --no-binary llama-cpp-python "llama-cpp-python==0.3.36"
}

# sentence-transformers 6.2.0 on torch 2.15.0 (CPU).
ensure_st_venv() {
  "$ST_VENV/bin/python" -c "import sentence_transformers, torch" 2>/dev/null && return
  echo "[bench] installing sentence-transformers and torch into $ST_VENV" >&2
  python3 -m venv "$ST_VENV"
  "$ST_VENV/bin/pip" install -q "sentence-transformers==6.2.0" "torch==2.15.0"
}
