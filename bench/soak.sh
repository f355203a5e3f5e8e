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
CACHE=${MLXENGINE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mlxengine}
scripts/setup.sh
cargo build --release --locked -q --workspace  # as scripts/test.sh: one llama.cpp build
home=$(mktemp -d); log=$home/server.log
MLXENGINE_HOME=$home target/release/mlxengine serve --port 0 --preload default 2>"$log" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$home"' EXIT
for _ in $(seq 600); do grep -q "listening on" "$log" && break; sleep 0.1; done
url=$(sed -n 's/^mlxengine: listening on //p' "$log")
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "server: $url (pid $pid), $CLIENTS clients for $MINUTES min"
"$CACHE/test-venv/bin/python" bench/soak.py "$url" "$pid" "$MINUTES" "$CLIENTS"
