#!/usr/bin/env bash
# LoRA on both llm providers, in one run on this machine: decode tok/s of the base, the
# base with the unfused adapter (the committed rank-8 q/k/v/o SmolLM2 adapter) and the
# fused model (`mlxengine fuse`), adapter load time, and the server's aggregate
# throughput of 8 concurrent greedy streams over 4 different adapters vs 8 on the base.
#   bench/lora.sh [max_tokens=128] [runs=3]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
N=${1:-128}
RUNS=${2:-3}
. bench/common.sh
scripts/setup.sh
cargo build --release --locked -q --workspace
ADAPTER=$PWD/tests/fixtures/lora/smollm2-pirate
BASE_DIR=$CACHE/models/smollm2-135m-instruct
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
export MLXENGINE_HOME=$work/home
REG=$work/lora.toml
{
  for i in 1 2 3 4; do
    printf '[[models]]\nid = "pirate-%s"\nkind = "lora"\narchitecture = "llama"\nbase = "smollm2-135m-instruct"\nsource = { path = "%s" }\n\n' "$i" "$ADAPTER"
  done
} > "$REG"
mlx() { target/release/mlxengine --registry "$REG" "$@"; }
mlx fuse --adapter pirate-1 -o "$work/fused" >/dev/null 2>&1
mlx add --id fused --kind llm --architecture llama --path "$work/fused" >/dev/null
# The fused model is float32 (the GGUF base dequantized + the update): as a GGUF for ggml.
mlx quantize "$work/fused" -o "$work/fused-f32.gguf" --type F32 >/dev/null 2>&1 || true

quiet_guard
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "SmolLM2-135M-Instruct, rank-8 adapter on q/k/v/o (120 layers), 128-token prompt, greedy, $N new tokens, median of $RUNS${BENCH_FLAG:-}"
dec() { python3 -c 'import json,sys; d=json.load(sys.stdin); print("%.1f" % d["decode_tps"]["median"])'; }
printf '%-8s %-34s %10s\n' provider model "decode tok/s"
for backend in ggml mlx; do
  base=$(mlx bench --backend $backend --max-tokens "$N" --runs "$RUNS" --json | dec)
  unf=$(mlx bench --backend $backend --adapter pirate-1 --max-tokens "$N" --runs "$RUNS" --json | dec)
  printf '%-8s %-34s %10s\n' $backend "base (Q4_1 GGUF)" "$base"
  printf '%-8s %-34s %10s  (%s of base)\n' $backend "base + adapter, unfused" "$unf" "$(python3 -c "print('%.0f%%' % (100*$unf/$base))")"
done
fm=$(mlx bench --backend mlx --model fused --max-tokens "$N" --runs "$RUNS" --json | dec)
printf '%-8s %-34s %10s\n' mlx "fused (float32 folder)" "$fm"
if [ -f "$work/fused-f32.gguf" ]; then
  mlx add --id fused-gguf --kind llm --architecture llama --path "$work/fused-f32.gguf" >/dev/null
  fg=$(mlx bench --backend ggml --model fused-gguf --max-tokens "$N" --runs "$RUNS" --json | dec)
  printf '%-8s %-34s %10s\n' ggml "fused (F32 GGUF)" "$fg"
fi

# Adapter load time and aggregate throughput through the server (ggml provider).
start_server --registry "$REG" --preload default
"$CACHE/test-venv/bin/python" - "$SERVER_URL" "$N" <<'PY'
import json, sys, threading, time, urllib.request
url, n = sys.argv[1], int(sys.argv[2])
def post(path, body):
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())
t = time.time(); post("/v1/adapters/load", {"id": "pirate-1"}); load = time.time() - t
for i in (2, 3, 4):
    post("/v1/adapters/load", {"id": f"pirate-{i}"})
def crowd(models):
    out = [0] * len(models)
    def one(i):
        r = post("/v1/chat/completions", {"model": models[i], "messages": [{"role": "user", "content": f"Write a story about the number {i}."}],
                                           "temperature": 0, "max_tokens": n})
        out[i] = r["usage"]["completion_tokens"]
    th = [threading.Thread(target=one, args=(i,)) for i in range(len(models))]
    t0 = time.time()
    [x.start() for x in th]; [x.join() for x in th]
    return sum(out) / (time.time() - t0)
crowd(["smollm2-135m-instruct"] * 2)  # warm
base = crowd(["smollm2-135m-instruct"] * 8)
mixed = crowd([f"pirate-{1 + i % 4}" for i in range(8)])
print(f"adapter load (convert to GGUF LoRA + llama.cpp init): {load*1000:.0f} ms")
print(f"server, 8 concurrent streams: base {base:.1f} tok/s; over 4 adapters {mixed:.1f} tok/s ({100*mixed/base:.0f}% of base)")
PY
