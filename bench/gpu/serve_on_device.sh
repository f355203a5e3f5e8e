#!/usr/bin/env bash
# On the GPU machine: the OpenAI server under concurrent streaming clients — `mlxengine
# serve` (MLX provider, continuous batching) beside `mlx_lm.server` (its BatchGenerator,
# 32 decode rows, 8 prompts prefilled together) on the same random-weight Llama of
# Llama-3.2-1B's shape in bfloat16: 1, 8 and 32 clients, unique ~130-token chat prompts,
# 128 greedy tokens, each client sending PER requests after one unmeasured pass per level
# (bench/server_load.py, standard library only); rounds alternate which server goes first. Then a chat's second turn
# (TTFT of turn 2 of a ~2,000-token conversation vs its first turn) on both.
#   bench/gpu/serve_on_device.sh BIN TOKENIZER_DIR OUT PEER_WHEELS [ROUNDS] [PER]
# BIN holds mlxengine and the MLX llm plugin built on the CPU machine; MLX's CUDA wheel is
# unpacked into python3's site-packages (see docs/mlx-on-linux.md); PEER_WHEELS holds the
# `mlx` Python wheels 0.32.4 and mlx-lm 0.32.2's.
set -euo pipefail
BIN=$1 TOK=$2 OUT=$3 PEER=$4 ROUNDS=${5:-2} PER=${6:-2}
SITE=$(python3 -c 'import site; print(site.getsitepackages()[0])')
export LD_LIBRARY_PATH=$SITE/mlx/lib CUDA_HOME=/usr/local/cuda
V=$(python3 -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')
python3 -m pip install -q --no-deps --no-index "$PEER"/mlx-0.32.4-cp$V-*.whl "$PEER"/mlx_lm-*.whl
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
WORK=$(mktemp -d)
RAW=$WORK/raw  # logs and per-round rows, returned as one archive
mkdir -p "$RAW"
python3 bench/gpu/make_models.py "$WORK" "$TOK"
MODEL=$WORK/llama-1b-shape
export MLXENGINE_HOME=$WORK/home
printf '[[models]]\nid = "bf16"\nkind = "llm"\narchitecture = "llama"\nsource = { path = "%s" }\n' "$MODEL" > "$WORK/models.toml"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_up() {  # wait_up URL PID LOG
  for _ in $(seq 1200); do
    python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$1" 2>/dev/null && return 0
    kill -0 "$2" 2>/dev/null || { tail -20 "$3"; return 1; }
    sleep 0.5
  done
  return 1
}
PID=
trap '[ -z "$PID" ] || kill $PID 2>/dev/null; tar czf "$OUT/raw.tgz" -C "$WORK" raw; rm -rf "$WORK"' EXIT
start() {  # start NAME ROUND: a server up on $PORT, its model name in $NAME_IN_API
  PORT=$(free_port)
  if [ "$1" = ours ]; then
    "$BIN/mlxengine" --plugin-dir "$BIN" --registry "$WORK/models.toml" serve --preload bf16 \
      --port "$PORT" --max-queue 256 >"$RAW/$1_$2.log" 2>&1 &
    PID=$!; NAME_IN_API=bf16; wait_up "http://127.0.0.1:$PORT/health" $PID "$RAW/$1_$2.log"
  else
    python3 -m mlx_lm.server --model "$MODEL" --port "$PORT" >"$RAW/$1_$2.log" 2>&1 &
    PID=$!; NAME_IN_API=default_model; wait_up "http://127.0.0.1:$PORT/v1/models" $PID "$RAW/$1_$2.log"
  fi
}
stop() { kill $PID; wait $PID 2>/dev/null || true; PID=; }
run() {  # run NAME ROUND
  start "$1" "$2"
  WARM_LEVELS=1 python3 bench/server_load.py "http://127.0.0.1:$PORT" "$NAME_IN_API" 128 1,8,32 "$PER" unique \
    | tee "$RAW/$1_load_$2.txt" | tail -1 >>"$RAW/$1.jsonl"
  python3 bench/gpu/second_turn.py "http://127.0.0.1:$PORT" "$NAME_IN_API" | sed "s/^/$1 /" | tee -a "$RAW/turns.txt"
  stop
}
for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then run ours $r; run mlx_lm $r; else run mlx_lm $r; run ours $r; fi
done
python3 - "$RAW" <<'PY' | tee "$OUT/summary.txt"
import json, statistics, sys
out = sys.argv[1]
def rows(name):
    by = {}
    for line in open(f"{out}/{name}.jsonl"):
        for r in json.loads(line):
            by.setdefault(r["concurrency"], []).append(r)
    return by
ours, peer = rows("ours"), rows("mlx_lm")
med = lambda rs, k: statistics.median(r[k] for r in rs)
print(f"{'streams':>7} | {'ours tok/s':>10} {'mlx-lm tok/s':>12} {'ratio':>6} | {'ours ttft p50':>13} {'mlx-lm':>7} | {'ours itl p99 ms':>15} {'mlx-lm':>7} | failed")
for c in sorted(ours):
    a, b = ours[c], peer[c]
    print(f"{c:>7} | {med(a,'aggregate_tok_s'):>10.1f} {med(b,'aggregate_tok_s'):>12.1f} "
          f"{med(a,'aggregate_tok_s')/med(b,'aggregate_tok_s'):>5.2f}x | {med(a,'ttft_p50_s'):>13.3f} {med(b,'ttft_p50_s'):>7.3f} | "
          f"{med(a,'itl_p99_ms'):>15.1f} {med(b,'itl_p99_ms'):>7.1f} | {sum(r['failed'] for r in a)} / {sum(r['failed'] for r in b)}")
PY
cat "$RAW/turns.txt" | tee -a "$OUT/summary.txt"
