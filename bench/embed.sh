#!/usr/bin/env bash
# Embedding throughput of MLXEngine's two embed providers (ggml: the checkpoint converted
# to GGUF and run by llama.cpp; mlx: MLX on CPU), all-MiniLM-L6-v2 in float32, next to
# sentence-transformers 6.2.0 on PyTorch 2.15.0 CPU: same sentences, same threads, one
# run. Rounds alternate the three so load from other tenants of a shared machine hits all
# alike; the ratio reported is the median of the per-round ratios.
#   bench/embed.sh [rounds=5] [runs=5]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROUNDS=${1:-5}
RUNS=${2:-5}
. bench/common.sh
scripts/setup.sh
cargo build --release --locked -q --workspace  # as scripts/test.sh: one llama.cpp build
ensure_st_venv
out=$(mktemp); trap 'rm -f "$out"' EXIT
ours() { target/release/mlxengine bench-embed --backend "$1" --batch 1,256 --runs "$RUNS" --json; }
for r in $(seq "$ROUNDS"); do
  echo "{\"ggml\": $(ours ggml), \"mlx\": $(ours mlx)," >>"$out"
  echo " \"peer\": $(OMP_NUM_THREADS=$THREADS "$ST_VENV/bin/python" bench/peers.py st \
    "$CACHE/models/all-minilm-l6-v2" 1,256 "$RUNS")}" >>"$out"
  echo "[embed] round $r of $ROUNDS done" >&2
done
python3 - "$out" "$ROUNDS" "$RUNS" <<'PY'
import json, statistics, sys
text = open(sys.argv[1]).read().replace("}\n{", "}\n,{")
rounds = json.loads("[" + text + "]")
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
cores = len(set(l for l in open('/proc/cpuinfo') if l.startswith('core id')))
print(f"machine: {cpu}, {cores} cores; `bench/embed.sh {sys.argv[2]} {sys.argv[3]}`, "
      "medians per round, ratio = median of per-round ratios to sentence-transformers")
print("\n| batch | ggml sentences/s (per round) | MLX sentences/s (per round) "
      "| sentence-transformers sentences/s (per round) | ggml ratio | MLX ratio |")
print("|---:|---|---|---|---:|---:|")
fmt = lambda xs: ", ".join(f"{x:.1f}" for x in xs)
for i, b in enumerate((1, 256)):
    col = lambda side: [r[side]["results"][i]["sentences_per_s"]["median"] for r in rounds]
    peer = col("peer")
    ratio = lambda side: statistics.median(o / p for o, p in zip(col(side), peer))
    print(f"| {b} | {fmt(col('ggml'))} | {fmt(col('mlx'))} | {fmt(peer)} "
          f"| **{ratio('ggml'):.2f}** | **{ratio('mlx'):.2f}** |")
mem = lambda side: max(r[side]["peak_rss_bytes"] for r in rounds) / 1e6
print(f"| peak memory | {mem('ggml'):.0f} MB | {mem('mlx'):.0f} MB | {mem('peer'):.0f} MB | | |")
PY
