#!/usr/bin/env bash
# The whole CPU comparison, one command, from a clean clone: MLXEngine next to the tools
# people would otherwise use, on the same weights, threads and prompts, in one run.
#
#   bench/run_all.sh [RUNS=3]
#
# Installs (idempotently, into the cache, pinned, from PyPI): mlx-lm 0.32.2 on mlx-cpu
# 0.32.4, llama-cpp-python 0.3.36 built from its sdist, sentence-transformers 6.2.0 on
# torch 2.15.0, matplotlib. Measures:
#   - LLM, prompts of ~128 and ~512 tokens, 128 new tokens, greedy: time to first token,
#     prefill and decode tok/s, peak memory — ggml provider vs llama.cpp on the shipped
#     Q4_1 GGUF and on q4_0 / f16 conversions of it (made by llama.cpp's quantizer); MLX
#     provider vs mlx-lm at each dtype the CPU policy allows (float32, bfloat16), on the
#     GGUF imported to safetensors (mlx-lm reads no GGUF);
#   - embeddings: sentences/s at batch 1 and 256 (short sentences), peak memory, vs
#     sentence-transformers on the same all-MiniLM-L6-v2 files;
#   - ABI overhead: plugin call round trip and token callback vs one decoded token;
#   - the server: aggregate tok/s and latency for 1, 4, 16 streams (bench/server.sh).
# Writes bench/results/cpu.json, bench/results/cpu.md and bench/results/cpu.png, and
# replaces the generated section of BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
RUNS=${1:-3}
. bench/common.sh
log() { echo "[bench] $*" >&2; }
scripts/setup.sh
cargo build --release --locked -q --workspace
MLX=target/release/mlxengine

# --- peers -------------------------------------------------------------------------------
ensure_bench_venv
ensure_st_venv
OPENBLAS=$(ls /usr/lib/*/openblas-pthread/libblas.so.3 | head -1)

# --- models: the shipped GGUF, q4_0 / f16 conversions, an f32 safetensors import ---------
GGUF=$(ls "$CACHE"/models/smollm2-135m-instruct/*.gguf)
B=$CACHE/bench
mkdir -p "$B"
for q in q4_0 f16; do
  [ -f "$B/smollm2-$q.gguf" ] && continue
  log "converting the GGUF to $q with llama.cpp's quantizer"
  "$VENV/bin/python" bench/peers.py quantize "$GGUF" "$B/smollm2-$q.gguf.part" "$q"
  mv "$B/smollm2-$q.gguf.part" "$B/smollm2-$q.gguf"
done
HF=$B/smollm2-135m-instruct-f32
[ -d "$HF" ] || $MLX import "$GGUF" "$HF" >/dev/null
home=$(mktemp -d); trap 'rm -rf "$home"' EXIT
export MLXENGINE_HOME=$home
$MLX add --id bench-f32 --kind llm --architecture llama --path "$HF" >/dev/null
for q in q4_0 f16; do
  $MLX add --id "bench-$q" --kind llm --architecture llama --path "$B/smollm2-$q.gguf" >/dev/null
done

out=bench/results
mkdir -p "$out"
quiet_guard
SETTINGS="ggml provider: $(ggml_settings $MLX smollm2-135m-instruct); llama.cpp: $LLAMA_SETTINGS"
log "settings: $SETTINGS"
R=$home/rows.jsonl
row() { echo "$1" >>"$R"; }
ours() { # id backend dtype prompt_tokens → one JSON row
  local extra=()
  [ -n "$3" ] && extra=(--dtype "$3")
  $MLX bench --model "$1" --backend "$2" "${extra[@]}" --prompt-tokens "$4" --max-tokens 128 --runs "$RUNS" --json
}

# --- LLM ---------------------------------------------------------------------------------
for P in 128 512; do
  for q in q4_1 q4_0 f16; do
    id=smollm2-135m-instruct; file=$GGUF
    [ "$q" != q4_1 ] && id=bench-$q && file=$B/smollm2-$q.gguf
    log "ggml provider vs llama.cpp, $q, prompt $P"
    row "{\"group\":\"llm\",\"what\":\"ggml $q p$P\",\"ours\":$(ours "$id" ggml "" "$P"),\"peer\":$("$VENV/bin/python" bench/peers.py llama "$file" "$P" 128 "$RUNS" "$THREADS"),\"peer_name\":\"llama.cpp (llama-cpp-python 0.3.36)\"}"
  done
  for dt in float32 bfloat16; do
    log "MLX provider vs mlx-lm, $dt, prompt $P"
    row "{\"group\":\"llm\",\"what\":\"mlx $dt p$P\",\"ours\":$(ours bench-f32 mlx "$dt" "$P"),\"peer\":$(LD_PRELOAD=$OPENBLAS "$VENV/bin/python" bench/peers.py mlx_lm "$HF" "$P" 128 "$RUNS" "$dt"),\"peer_name\":\"mlx-lm 0.32.2\"}"
  done
done

# --- embeddings ----------------------------------------------------------------------------
log "embeddings vs sentence-transformers"
row "{\"group\":\"embed\",\"what\":\"all-MiniLM-L6-v2\",\"ours\":$($MLX bench-embed --batch 1,256 --runs 5 --json),\"peer\":$(OMP_NUM_THREADS=$THREADS "$ST_VENV/bin/python" bench/peers.py st "$CACHE/models/all-minilm-l6-v2" 1,256 5),\"peer_name\":\"sentence-transformers 6.2.0 (torch 2.15.0 CPU)\"}"

# --- ABI overhead ---------------------------------------------------------------------------
log "ABI overhead"
row "{\"group\":\"abi\",\"what\":\"default llm\",\"ours\":$($MLX bench-abi --json)}"

# --- server -----------------------------------------------------------------------------------
log "server, 1/4/16 streams"
bench/server.sh 64 2 | tee "$home/server.txt" >&2
row "{\"group\":\"server\",\"what\":\"64 tokens x 2 requests per client\",\"text\":$(python3 -c 'import json,sys; print(json.dumps(open(sys.argv[1]).read()))' "$home/server.txt")}"

machine="$(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs) ($(grep -o -m1 'avx512f\|avx2' /proc/cpuinfo | head -1)), $(date -u +%F); steal $(steal_since)%$BENCH_FLAG. Settings: $SETTINGS"
"$VENV/bin/python" bench/report.py "$R" "$out" "$machine" "$RUNS"
cat "$out/cpu.md"
