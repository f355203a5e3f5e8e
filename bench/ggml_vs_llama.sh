#!/usr/bin/env bash
# The ggml provider against llama.cpp itself (llama-cpp-python 0.3.36 built natively from
# its sdist), on the shipped Q4_1 GGUF and its q4_0 / f16 conversions (llama.cpp's own
# quantizer), 128- and 512-token prompts, 128 greedy tokens, the same context settings on
# both sides (printed). Each setup runs ROUNDS alternating rounds (ours, then llama.cpp,
# RUNS runs each after a warm-up); the figure per setup is the median of the per-round
# ratios, so load from other tenants of a shared machine hits both sides alike — unlike
# bench/run_all.sh, whose one pass per side moves ±5-10% between runs on a 2-core VM.
#   bench/ggml_vs_llama.sh [rounds=3] [runs=3]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROUNDS=${1:-3}
RUNS=${2:-3}
. bench/common.sh
scripts/setup.sh >/dev/null
cargo build --release --locked -q --workspace # as scripts/test.sh: one llama.cpp build
ensure_bench_venv
MLX=target/release/mlxengine
GGUF=$(ls "$CACHE"/models/smollm2-135m-instruct/*.gguf)
B=$CACHE/bench
mkdir -p "$B"
for q in q4_0 f16; do
  [ -f "$B/smollm2-$q.gguf" ] && continue
  "$VENV/bin/python" bench/peers.py quantize "$GGUF" "$B/smollm2-$q.gguf.part" "$q"
  mv "$B/smollm2-$q.gguf.part" "$B/smollm2-$q.gguf"
done
home=$(mktemp -d); trap 'rm -rf "$home"' EXIT
export MLXENGINE_HOME=$home
for q in q4_0 f16; do
  $MLX add --id "bench-$q" --kind llm --architecture llama --path "$B/smollm2-$q.gguf" >/dev/null
done

quiet_guard
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs) ($(grep -o -m1 'avx512f\|avx2' /proc/cpuinfo | head -1))"
echo "ggml provider: $(ggml_settings $MLX smollm2-135m-instruct)"
echo "llama.cpp: $LLAMA_SETTINGS"
echo "$ROUNDS alternating rounds per setup, $RUNS runs per side per round (medians), 128 new tokens"
printf '%-10s %6s  %-34s %-34s\n' setup prompt "prefill ours/llama.cpp per round" "decode ours/llama.cpp per round"
for P in 128 512; do
  for q in q4_1 q4_0 f16; do
    id=smollm2-135m-instruct; file=$GGUF
    [ "$q" != q4_1 ] && id=bench-$q && file=$B/smollm2-$q.gguf
    rows=""
    for _ in $(seq "$ROUNDS"); do
      o=$($MLX bench --model "$id" --backend ggml --prompt-tokens "$P" --max-tokens 128 --runs "$RUNS" --json)
      p=$("$VENV/bin/python" bench/peers.py llama "$file" "$P" 128 "$RUNS" "$THREADS")
      rows="$rows$o"$'\t'"$p"$'\n'
    done
    printf '%s' "$rows" | python3 -c '
import json, statistics, sys
q, P = sys.argv[1], sys.argv[2]
pre, dec = [], []
for line in sys.stdin:
    o, p = (json.loads(x) for x in line.rstrip("\n").split("\t"))
    pre.append(o["prefill_tps"]["median"] / p["prefill_tps"]["median"])
    dec.append(o["decode_tps"]["median"] / p["decode_tps"]["median"])
f = lambda v: " ".join(f"{x:.3f}" for x in v)
e = ""
print(f"{q:<10} {P:>6}  {f(pre):<34} {f(dec):<34}")
print(f"{e:<10} {e:>6}  median {statistics.median(pre):.3f}{e:<21} median {statistics.median(dec):.3f}")
' "$q" "$P"
  done
done
echo "steal: $(steal_since)%$BENCH_FLAG"
