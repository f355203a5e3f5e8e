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

# llama.cpp's own tools from the llama-cpp-python 0.3.36 sdist (its vendored llama.cpp,
# native CPU flags, as the bench venv's build), configured once into $CACHE/llama-server;
# `llama_cpp_tool TARGET` builds one of them there (incremental: an interrupted build goes
# on where it stopped) and sets LLAMA_TOOL to the binary.
llama_cpp_tool() {
  local src=$CACHE/llama-server
  LLAMA_TOOL=$src/build/bin/$1
  [ -x "$LLAMA_TOOL" ] && return
  echo "[bench] building $1 from the llama-cpp-python 0.3.36 sdist into $src" >&2
  if [ ! -d "$src/llama_cpp_python-0.3.36" ]; then
    rm -rf "$src" && mkdir -p "$src"
    python3 -m pip download -q --no-deps --no-binary :all: -d "$src" "llama-cpp-python==0.3.36"
    tar -xzf "$src"/llama_cpp_python-0.3.36.tar.gz -C "$src"
  fi
  # AMX off: on a KVM Sapphire Rapids its kernels crash on quantized tensors (Q8_0 here;
  # docs/ggml-backend.md: the ggml plugin's AMX variant is opt-in for the same reason).
  cmake -S "$src"/llama_cpp_python-0.3.36/vendor/llama.cpp -B "$src/build" \
    -DCMAKE_C_FLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" \
    -DCMAKE_CXX_FLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" \
    -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF >/dev/null
  cmake --build "$src/build" --target "$1" -j "$(nproc)" >"$src/build-$1.log" 2>&1 ||
    { tail -20 "$src/build-$1.log" >&2; return 1; }
}

# `llama-server` (~5 min on 2 cores the first time). Sets LLAMA_SERVER.
ensure_llama_server() {
  llama_cpp_tool llama-server
  LLAMA_SERVER=$LLAMA_TOOL
}

# `llama-perplexity`, llama.cpp's perplexity tool. Sets LLAMA_PERPLEXITY.
ensure_llama_perplexity() {
  llama_cpp_tool llama-perplexity
  LLAMA_PERPLEXITY=$LLAMA_TOOL
}

# sentence-transformers 6.2.0 on torch 2.15.0 (CPU).
ensure_st_venv() {
  "$ST_VENV/bin/python" -c "import sentence_transformers, torch" 2>/dev/null && return
  echo "[bench] installing sentence-transformers and torch into $ST_VENV" >&2
  python3 -m venv "$ST_VENV"
  "$ST_VENV/bin/pip" install -q "sentence-transformers==6.2.0" "torch==2.15.0"
}

# A benchmark on a busy machine is wrong, not noisy: on 2 cores another process distorted
# figures 10x+, and `nice` does not help where the kernel groups processes by session
# (sched_autogroup). quiet_guard samples the run queue (other runnable tasks, excluding
# the sampler) for 2 s and refuses to start when something else runs, unless
# BENCH_ALLOW_BUSY=1 (then every figure is printed with a BUSY flag). steal_since
# reports the hypervisor's steal time since a quiet_guard: a neighbour on the host.
BENCH_FLAG=""
quiet_guard() {
  local others
  others=$(python3 - <<'PY'
import statistics, time
s = []
for _ in range(20):
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("procs_running"):
                s.append(int(line.split()[1]) - 1)
    time.sleep(0.1)
print(statistics.median(s))
PY
)
  STEAL_START=$(awk '/^cpu /{print $9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat)
  if [ "${others%.*}" -ge 1 ]; then
    echo "[bench] BUSY: $others other runnable task(s) on $(nproc) cores:" >&2
    ps -eo pid,pcpu,comm --sort=-pcpu | sed -n '2,6p' >&2
    if [ "${BENCH_ALLOW_BUSY:-0}" != 1 ]; then
      echo "[bench] refusing to measure (set BENCH_ALLOW_BUSY=1 to measure anyway, flagged)" >&2
      exit 3
    fi
    BENCH_FLAG=" [BUSY: figures not trustworthy]"
  fi
}
steal_since() {
  local now
  now=$(awk '/^cpu /{print $9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat)
  python3 -c 'import sys; s0,t0,s1,t1=map(float,sys.argv[1:]); print("%.1f" % (100*(s1-s0)/max(1,t1-t0)))' $STEAL_START $now
}

# The ggml provider's context settings for a model, as its probe reports them:
#   ggml_settings MLXENGINE_BINARY [--registry FILE] MODEL_ID
ggml_settings() {
  local bin=$1; shift
  local model=${*: -1}
  "$bin" "${@:1:$#-1}" info "$model" --json | python3 -c 'import json,sys; print(next(c["reason"] for c in json.load(sys.stdin)["candidates"] if c["plugin"] == "ggml-llm"))'
}
# What the llama.cpp peer is given (bench/peers.py, llm_decode.sh): the provider's CPU defaults.
LLAMA_SETTINGS="flash_attn=True, KV cache f16, $THREADS threads, n_batch 512"

# Start `mlxengine serve --port 0 ARGS...` (the release build) with a home of its own;
# sets SERVER_URL and SERVER_PID, and stops it when the script exits.
start_server() {
  SERVER_HOME=$(mktemp -d)
  MLXENGINE_HOME=$SERVER_HOME target/release/mlxengine serve --port 0 "$@" 2>"$SERVER_HOME/server.log" &
  SERVER_PID=$!
  trap 'kill $SERVER_PID 2>/dev/null; wait $SERVER_PID 2>/dev/null; rm -rf "$SERVER_HOME"' EXIT
  for _ in $(seq 600); do grep -q "listening on" "$SERVER_HOME/server.log" && break; sleep 0.1; done
  SERVER_URL=$(sed -n 's/^mlxengine: listening on //p' "$SERVER_HOME/server.log")
  [ -n "$SERVER_URL" ] || { cat "$SERVER_HOME/server.log" >&2; echo "the server did not start" >&2; exit 1; }
}
