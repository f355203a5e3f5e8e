#!/usr/bin/env bash
# Decode/prefill speed of MLXEngine's two llm providers next to the tools people would
# otherwise use, in one run on this machine:
#   - MLX provider vs mlx-lm 0.32.2 (same MLX 0.32.4 on CPU with OpenBLAS) on the default
#     model's GGUF dequantized to float32 by `mlxengine import` (mlx-lm reads no GGUF);
#   - ggml provider vs llama.cpp itself through llama-cpp-python 0.3.36 (built from its
#     PyPI sdist with native CPU flags; same threads, same 128-token prompt) on the Q4_1
#     GGUF itself.
# Peers are installed into the cache (a venv; a llama.cpp build dir), never into the repo.
# The ggml comparison alternates ours and llama.cpp for ROUNDS rounds and reports the
# median of the per-round ratios, so load from other tenants of a shared machine hits
# both sides alike.
#   bench/llm_decode.sh [max_tokens=128] [runs=3] [rounds=5]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
N=${1:-128}
RUNS=${2:-3}
ROUNDS=${3:-5}
. bench/common.sh
scripts/setup.sh
cargo build --release --locked -q --workspace  # as scripts/test.sh: one llama.cpp build
ensure_bench_venv
HF=$CACHE/bench/smollm2-135m-instruct-f32
if [ ! -d "$HF" ]; then
  mkdir -p "$(dirname "$HF")"
  target/release/mlxengine import "$CACHE"/models/smollm2-135m-instruct/*.gguf "$HF" >/dev/null
fi
OPENBLAS=$(ls /usr/lib/*/openblas-pthread/libblas.so.3 | head -1)
PROMPT="Write a long story about a lighthouse keeper who finds a message in a bottle."
home=$(mktemp -d); trap 'rm -rf "$home"' EXIT
export MLXENGINE_HOME=$home
target/release/mlxengine add --id bench-f32 --kind llm --architecture llama --path "$HF" >/dev/null

quiet_guard
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs) ($(grep -o -m1 'avx512f\|avx2' /proc/cpuinfo | head -1))"
echo "model: SmolLM2-135M-Instruct (f32), chat prompt, greedy, $N new tokens, $RUNS runs (median)"
ours=$(target/release/mlxengine bench --model bench-f32 --chat --prompt "$PROMPT" --max-tokens "$N" --runs "$RUNS" --json)
od=$(echo "$ours" | python3 -c 'import json,sys; print(json.load(sys.stdin)["decode_tps"]["median"])')
op=$(echo "$ours" | python3 -c 'import json,sys; print(json.load(sys.stdin)["prefill_tps"]["median"])')
peer=$(LD_PRELOAD=$OPENBLAS "$VENV/bin/python" - "$HF" "$N" "$RUNS" "$PROMPT" <<'PY'
import sys, statistics
from mlx_lm import load, stream_generate
path, n, runs, prompt = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
model, tok = load(path)
text = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
dec, pre = [], []
for _ in stream_generate(model, tok, text, max_tokens=8):  # warm-up, as ours
    pass
for _ in range(runs):
    last = None
    for r in stream_generate(model, tok, text, max_tokens=n):
        last = r
    dec.append(last.generation_tps); pre.append(last.prompt_tps)
print(statistics.median(dec), statistics.median(pre))
PY
)
pd=${peer% *}; pp=${peer#* }
GGUF=$(ls "$CACHE"/models/smollm2-135m-instruct/*.gguf)
cat > "$home/llama_cpp_bench.py" <<'PY'
import sys, time, statistics
from llama_cpp import Llama
path, n, runs, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
words = "the river carried old stories past quiet towns where people still remember long summer nights and".split()
# The ggml provider's CPU settings (plugins/llm-ggml/src/settings.rs): flash attention
# on, f16 KV cache (llama.cpp's default type), one thread per physical core.
llm = Llama(model_path=path, n_ctx=1024, n_threads=threads, n_threads_batch=threads,
            flash_attn=True, verbose=False)
prompt = llm.tokenize(" ".join(words[i % len(words)] for i in range(128)).encode(), add_bos=False)
def run(m):
    llm.reset()
    t0 = time.perf_counter(); llm.eval(prompt); t1 = time.perf_counter()
    for i in range(m):
        tok = llm.sample(temp=0.0)
        llm.eval([tok])
    t2 = time.perf_counter()
    return len(prompt) / (t1 - t0), m / (t2 - t1)
run(8)
res = [run(n) for _ in range(runs)]
print(statistics.median(r[1] for r in res), statistics.median(r[0] for r in res))
PY
rounds=""
for r in $(seq "$ROUNDS"); do
  gg=$(target/release/mlxengine bench --model smollm2-135m-instruct --backend ggml --prompt-tokens 128 --max-tokens "$N" --runs "$RUNS" --json \
    | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["decode_tps"]["median"], d["prefill_tps"]["median"])')
  lc=$("$VENV/bin/python" "$home/llama_cpp_bench.py" "$GGUF" "$N" "$RUNS" "$THREADS")
  rounds="$rounds$gg $lc
"
done
read -r gd gp ld lp rd rp <<<"$(printf '%s' "$rounds" | python3 -c '
import sys, statistics as st
rows = [list(map(float, l.split())) for l in sys.stdin if l.strip()]
med = lambda i: st.median(r[i] for r in rows)
print(med(0), med(1), med(2), med(3), st.median(r[0] / r[2] for r in rows), st.median(r[1] / r[3] for r in rows))')"
printf '%-28s %12s %12s\n' "" "decode tok/s" "prefill tok/s"
printf '%-28s %12.1f %12.1f\n' "MLXEngine (mlx-llm plugin)" "$od" "$op"
printf '%-28s %12.1f %12.1f\n' "mlx-lm 0.32.2" "$pd" "$pp"
printf '%-28s %12.2f %12.2f\n' "ratio MLX provider / mlx-lm" "$(echo "$od / $pd" | bc -l)" "$(echo "$op / $pp" | bc -l)"
echo "Q4_1 GGUF, $THREADS threads, 128-token prompt. Settings:"
echo "  ggml provider: $(ggml_settings target/release/mlxengine smollm2-135m-instruct)"
echo "  llama.cpp:     $LLAMA_SETTINGS"
printf '%-28s %12.1f %12.1f\n' "MLXEngine (ggml-llm plugin)" "$gd" "$gp"
printf '%-28s %12.1f %12.1f\n' "llama.cpp (llama-cpp-python)" "$ld" "$lp"
printf '%-28s %12.2f %12.2f\n' "ratio ggml provider / llama" "$rd" "$rp"
echo "(medians over $ROUNDS alternating rounds; ratio = median of per-round ratios; steal $(steal_since)%)$BENCH_FLAG"
printf '%s' "$rounds" | awk '{printf "  round %d: ggml provider %.1f / %.1f, llama.cpp %.1f / %.1f\n", NR, $1, $2, $3, $4}'
