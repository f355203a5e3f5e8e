#!/usr/bin/env bash
# Server throughput: aggregate tokens/s and latency percentiles of `mlxengine serve` for
# 1, 4 and 16 concurrent streaming clients (continuous batching) on the default model.
#
#   bench/server.sh [MAX_TOKENS] [REQUESTS_PER_CLIENT]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-64}
R=${2:-2}
. bench/common.sh
scripts/setup.sh
cargo build --release --locked -q --workspace  # as scripts/test.sh: one llama.cpp build
start_server --preload default
url=$SERVER_URL
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "server: $url, model smollm2-135m-instruct (ggml provider), $N tokens per request, $R requests per client"
"$CACHE/test-venv/bin/python" bench/server_load.py "$url" smollm2-135m-instruct "$N" 1,4,16 "$R"
