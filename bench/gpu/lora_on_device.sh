#!/usr/bin/env bash
# On the GPU machine: LoRA on our MLX provider — decode of the base, the base with an
# unfused rank-8 q/k/v/o adapter, and the fused model (`mlxengine fuse`), adapter load
# time, and the server's aggregate throughput of 8 concurrent streams over 4 adapters vs
# 8 on the base; on a random-weight Llama of Llama-3.2-1B's shape in bfloat16.
#   bench/gpu/lora_on_device.sh BIN_DIR TOKENIZER_DIR OUT
# BIN_DIR holds mlxengine and the MLX llm plugin built on the CPU machine; MLX's CUDA
# wheel unpacked into python3's site-packages (see docs/mlx-on-linux.md).
set -euo pipefail
BIN=$1 TOK=$2 OUT=$3
SITE=$(python3 -c 'import site; print(site.getsitepackages()[0])')
export LD_LIBRARY_PATH=$SITE/mlx/lib CUDA_HOME=/usr/local/cuda
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
WORK=$(mktemp -d)
python3 bench/gpu/make_models.py "$WORK" "$TOK"
for i in 1 2 3 4; do python3 bench/gpu/make_adapter.py "$WORK/llama-1b-shape" "$WORK/adapter-$i" 8 $i; done
export MLXENGINE_HOME=$WORK/home
{
  printf '[[models]]\nid = "bf16"\nkind = "llm"\narchitecture = "llama"\nsource = { path = "%s" }\n\n' "$WORK/llama-1b-shape"
  for i in 1 2 3 4; do
    printf '[[models]]\nid = "a%s"\nkind = "lora"\narchitecture = "llama"\nbase = "bf16"\nsource = { path = "%s" }\n\n' $i "$WORK/adapter-$i"
  done
} > "$WORK/models.toml"
M="$BIN/mlxengine --plugin-dir $BIN --registry $WORK/models.toml"
$M fuse --adapter a1 -o "$WORK/fused" 2>&1 | tail -1
$M add --id fused --kind llm --architecture llama --path "$WORK/fused" >/dev/null
B="--prompt-tokens 512 --max-tokens 128 --runs 3 --json"
for r in 1 2; do
  $M bench --model bf16 $B > "$OUT/base_$r.json"
  $M bench --model bf16 --adapter a1 $B > "$OUT/unfused_$r.json"
  $M bench --model fused $B > "$OUT/fused_$r.json"
  for k in base unfused fused; do
    python3 -c "import json,sys; b=json.load(open(sys.argv[1])); print('RUN', sys.argv[3], sys.argv[2], 'decode', b['decode_tps']['median'], 'prefill', b['prefill_tps']['median'])" "$OUT/${k}_$r.json" $k $r
  done
done
$M serve --port 18080 > "$WORK/serve.log" 2>&1 &
SP=$!
for _ in $(seq 300); do grep -q "listening on" "$WORK/serve.log" && break; sleep 0.2; done
python3 - http://127.0.0.1:18080 <<'PY' | tee "$OUT/server.txt"
import json, sys, threading, time, urllib.request
url = sys.argv[1]
def post(path, body):
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())
def crowd(models, n=128):
    out = [0] * len(models)
    def one(i):
        r = post("/v1/chat/completions", {"model": models[i], "messages": [{"role": "user", "content": f"Story {i}"}],
                                           "temperature": 0, "max_tokens": n})
        out[i] = r["usage"]["completion_tokens"]
    th = [threading.Thread(target=one, args=(i,)) for i in range(len(models))]
    t0 = time.time(); [x.start() for x in th]; [x.join() for x in th]
    return sum(out) / (time.time() - t0)
crowd(["bf16"] * 2, 8)
loads = []
for i in (1, 2, 3, 4):
    t = time.time(); post("/v1/adapters/load", {"id": f"a{i}"}); loads.append(time.time() - t)
print("adapter load ms:", [round(1000 * x) for x in loads])
base = crowd(["bf16"] * 8)
mixed = crowd([f"a{1 + i % 4}" for i in range(8)])
print(f"8 concurrent streams: base {base:.1f} tok/s; over 4 adapters {mixed:.1f} tok/s ({100*mixed/base:.0f}% of base)")
PY
kill $SP
