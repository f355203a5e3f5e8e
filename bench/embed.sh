#!/usr/bin/env bash
# Embedding throughput of MLXEngine (mlx-embed, all-MiniLM-L6-v2, float32) next to
# sentence-transformers 6.2.0 on PyTorch 2.15.0 CPU, same sentences, same threads, in one
# run. Rounds alternate ours and the peer so load from other tenants of a shared machine
# hits both alike; the ratio reported is the median of the per-round ratios.
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
for r in $(seq "$ROUNDS"); do
  echo "{\"ours\": $(target/release/mlxengine bench-embed --batch 1,256 --runs "$RUNS" --json)," >>"$out"
  echo " \"peer\": $(OMP_NUM_THREADS=$THREADS "$ST_VENV/bin/python" bench/peers.py st \
    "$CACHE/models/all-minilm-l6-v2" 1,256 "$RUNS")}" >>"$out"
  echo "[embed] round $r of $ROUNDS done" >&2
done
python3 - "$out" "$ROUNDS" "$RUNS" <<'PY'
import json, statistics, sys
text = open(sys.argv[1]).read().replace("}\n{", "}\n,{")
rounds = json.loads("[" + text + "]")
print(f"machine: {len(set(l for l in open('/proc/cpuinfo') if l.startswith('core id')))} cores; "
      f"`bench/embed.sh {sys.argv[2]} {sys.argv[3]}`, medians per round, ratio = median of per-round ratios")
print("\n| batch | MLXEngine sentences/s (per round) | sentence-transformers sentences/s (per round) | ratio |")
print("|---:|---|---|---:|")
for i, b in enumerate((1, 256)):
    ours = [r["ours"]["results"][i]["sentences_per_s"]["median"] for r in rounds]
    peer = [r["peer"]["results"][i]["sentences_per_s"]["median"] for r in rounds]
    ratio = statistics.median(o / p for o, p in zip(ours, peer))
    fmt = lambda xs: ", ".join(f"{x:.1f}" for x in xs)
    print(f"| {b} | {fmt(ours)} | {fmt(peer)} | **{ratio:.2f}** |")
mem = lambda k, side: max(r[side][k] for r in rounds) / 1e6
print(f"| peak memory | {mem('peak_rss_bytes', 'ours'):.0f} MB | {mem('peak_rss_bytes', 'peer'):.0f} MB | |")
PY
