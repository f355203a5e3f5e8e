#!/usr/bin/env bash
# Server throughput next to llama.cpp's own server, in one run: aggregate tokens/s, time
# to first token and latency percentiles for 1, 4 and 16 concurrent streaming clients on
# the default model (SmolLM2-135M Q4_1), `mlxengine serve` (ggml provider) first, then
# `llama-server` built from the same llama-cpp-python sdist as the other peers
# (`-t THREADS -np 16 -c 8192 -fa on`: its parallel slots and context as people run it,
# flash attention as our CPU default). Three loads (bench/server_load.py): unique
# prompts, one shared prompt sampled (what a prompt cache can reuse), one shared prompt
# greedy (what a recorded answer replays).
#
#   bench/server.sh [MAX_TOKENS] [REQUESTS_PER_CLIENT] [MODES]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-128}
R=${2:-2}
MODES=${3:-unique,shared,greedy}
. bench/common.sh
scripts/setup.sh
cargo build --release --locked -q --workspace  # as scripts/test.sh: one llama.cpp build
ensure_llama_server
MODEL=smollm2-135m-instruct
GGUF=$(ls "$CACHE"/models/$MODEL/*.gguf)
PY=$CACHE/test-venv/bin/python
OUT=$(mktemp -d)
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "model $MODEL ($(basename "$GGUF")), $N tokens per request, $R requests per client, $THREADS threads"
quiet_guard

load() {  # load NAME URL: every mode, rows into $OUT/NAME.jsonl
  for mode in ${MODES//,/ }; do
    local rows
    rows=$("$PY" bench/server_load.py "$2" "$MODEL" "$N" 1,4,16 "$R" "$mode")
    echo "$rows" >&2
    echo "$rows" | tail -1 >>"$OUT/$1.jsonl"
  done
}

echo "== mlxengine serve ($(ggml_settings target/release/mlxengine "$MODEL"))" >&2
start_server --preload default
load ours "$SERVER_URL"
kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true

echo "== llama-server -t $THREADS -np 16 -c 8192 -fa on" >&2
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$LLAMA_SERVER" -m "$GGUF" -t "$THREADS" -tb "$THREADS" -np 16 -c 8192 -fa on \
  --host 127.0.0.1 --port "$port" >"$OUT/llama-server.log" 2>&1 &
LPID=$!
trap 'kill $LPID 2>/dev/null || true; rm -rf "$OUT" "$SERVER_HOME"' EXIT
for _ in $(seq 300); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.2; done
load llama "http://127.0.0.1:$port"
kill "$LPID"; wait "$LPID" 2>/dev/null || true

python3 - "$OUT" "$BENCH_FLAG" "$(steal_since)" <<'PY'
import json, sys
out, flag, steal = sys.argv[1], sys.argv[2], sys.argv[3]
rows = lambda name: {(r["mode"], r["concurrency"]): r for line in open(f"{out}/{name}.jsonl") for r in json.loads(line)}
ours, llama = rows("ours"), rows("llama")
print(f"\n{'load':>7} {'streams':>7} | {'ours tok/s':>10} {'llama tok/s':>11} {'ratio':>6} | {'ours ttft':>9} {'llama ttft':>10} (p50, s)")
for key in ours:
    a, b = ours[key], llama[key]
    print(f"{key[0]:>7} {key[1]:>7} | {a['aggregate_tok_s']:>10.1f} {b['aggregate_tok_s']:>11.1f} "
          f"{a['aggregate_tok_s'] / b['aggregate_tok_s']:>5.2f}x | {a['ttft_p50_s']:>9.3f} {b['ttft_p50_s']:>10.3f}")
print(f"(steal {steal}% of CPU time during the run){flag}")
PY
