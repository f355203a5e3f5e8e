#!/usr/bin/env bash
# Soak: 16 concurrent clients against `mlxengine serve` on loopback for MINUTES (default
# 10), mixing streamed chat, completions, embeddings, disconnects mid-stream, bad requests
# and model unload/load. Checks: no unexpected error, every answer about its own prompt,
# /metrics consistent with what the clients counted; reports the server's resident memory
# over time (flat after warm-up).
#
#   bench/soak.sh [MINUTES] [CLIENTS]
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-10}
CLIENTS=${2:-16}
. bench/common.sh
scripts/setup.sh
cargo build --release --locked -q --workspace  # as scripts/test.sh: one llama.cpp build
start_server --preload default
url=$SERVER_URL pid=$SERVER_PID
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "server: $url (pid $pid), $CLIENTS clients for $MINUTES min"
"$CACHE/test-venv/bin/python" bench/soak.py "$url" "$pid" "$MINUTES" "$CLIENTS"
