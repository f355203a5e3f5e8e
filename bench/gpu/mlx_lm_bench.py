"""mlx-lm on the same GPU and checkpoint: prefill tok/s of a 512-token prompt and decode
tok/s over 128 greedy tokens (mlx-lm's own stream_generate figures), median of 3 after a
warm-up, optionally with its quantized KV cache (kv_bits, kv_group_size, from the start).

  python3 bench/gpu/mlx_lm_bench.py MODEL_DIR [KV_BITS [KV_GROUP]]
"""
import json, statistics, sys

import mlx.core as mx
from mlx_lm import load, stream_generate

path = sys.argv[1]
kv = {"kv_bits": int(sys.argv[2]), "kv_group_size": int(sys.argv[3]) if len(sys.argv) > 3 else 64,
      "quantized_kv_start": 0} if len(sys.argv) > 2 else {}
model, tok = load(path)
prompt = [int(x) for x in mx.random.randint(3, 49000, (512,), key=mx.random.key(0)).tolist()]


def run(n):
    last = None
    for r in stream_generate(model, tok, prompt, max_tokens=n, **kv):
        last = r
    return last


run(8)
rs = [run(128) for _ in range(3)]
print("MLX_LM", json.dumps({
    "model": path, "kv_bits": kv.get("kv_bits"), "kv_group_size": kv.get("kv_group_size"),
    "prefill_tps": statistics.median(r.prompt_tps for r in rs),
    "decode_tps": statistics.median(r.generation_tps for r in rs),
    "peak_memory_bytes": int(max(r.peak_memory for r in rs) * 1e9),
}))
