"""mlx-lm (pinned, CPU) as the reference for `mlxengine quantize`; tests/quant.rs runs it.

  compare OURS THEIRS       tensors and config `quantization` of two MLX checkpoints
  generate MODEL PROMPT N [KV_BITS KV_GROUP]
                            mlx-lm's greedy continuation of a raw prompt, with the
                            top-2 logit gap and the chosen token's log-probability at
                            each step; with KV_BITS the cache is quantized after the
                            prompt (mlx-lm's `kv_bits`, `quantized_kv_start = 0`)
  perplexity MODEL FILE CTX CHUNKS
                            llama-perplexity's method (chunks of CTX, BOS first where
                            the tokenizer adds one, the second half scored) on mlx-lm

Prints one JSON object.
"""

import json
import sys

import mlx.core as mx


def load_weights(path):
    with open(f"{path}/model.safetensors.index.json") as f:
        files = sorted(set(json.load(f)["weight_map"].values()))
    out = {}
    for name in files:
        out.update(mx.load(f"{path}/{name}"))
    return out


def compare(ours, theirs):
    a, b = load_weights(ours), load_weights(theirs)
    differ = [
        k
        for k in sorted(set(a) & set(b))
        if a[k].dtype != b[k].dtype
        or a[k].shape != b[k].shape
        or not mx.array_equal(a[k], b[k]).item()
    ]
    config = [json.load(open(f"{p}/config.json")) for p in (ours, theirs)]
    return {
        "count": len(a),
        "only_ours": sorted(set(a) - set(b)),
        "only_theirs": sorted(set(b) - set(a)),
        "differ": differ,
        "quantization": [c.get("quantization") for c in config],
        "quantization_config": [c.get("quantization_config") for c in config],
    }


def generate(path, prompt, n, kv_bits=None, kv_group=64):
    from mlx_lm import load
    from mlx_lm.generate import maybe_quantize_kv_cache
    from mlx_lm.models.cache import make_prompt_cache

    model, tokenizer = load(path)
    ids = tokenizer.encode(prompt)
    cache = make_prompt_cache(model)
    logits = model(mx.array([ids]), cache=cache)[0, -1]
    out, gaps, logprobs = [], [], []
    for _ in range(n):
        # As mlx-lm's generate_step after each model call.
        maybe_quantize_kv_cache(cache, 0, kv_group, kv_bits)
        l = logits.astype(mx.float32)
        top = mx.argsort(-l)[:2].tolist()
        gaps.append((l[top[0]] - l[top[1]]).item())
        logprobs.append((l[top[0]] - mx.logsumexp(l)).item())
        out.append(top[0])
        logits = model(mx.array([[top[0]]]), cache=cache)[0, -1]
    return {"prompt_ids": ids, "ids": out, "gaps": gaps, "logprobs": logprobs}


def perplexity(path, file, ctx, chunks):
    import math

    from mlx_lm import load

    model, tokenizer = load(path)
    ids = tokenizer.encode(open(file, encoding="utf-8").read())
    bos = tokenizer.bos_token_id if getattr(tokenizer, "add_bos_token", False) else None
    nll, scored, first = 0.0, 0, ctx // 2
    for i in range(chunks):
        chunk = ids[i * ctx : (i + 1) * ctx]
        if bos is not None:
            chunk[0] = bos
        logits = model(mx.array([chunk[:-1]]))[0].astype(mx.float32)
        logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        picked = mx.take_along_axis(logp, mx.array(chunk[1:])[:, None], axis=-1)[:, 0]
        nll -= picked[first:].sum().item()
        scored += ctx - 1 - first
    return {"ppl": math.exp(nll / scored), "scored": scored, "text_tokens": len(ids)}


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "compare":
        print(json.dumps(compare(sys.argv[2], sys.argv[3])))
    elif cmd == "generate":
        kv = [int(a) for a in sys.argv[5:7]]
        print(json.dumps(generate(sys.argv[2], sys.argv[3], int(sys.argv[4]), *kv)))
    elif cmd == "perplexity":
        args = sys.argv[2:]
        print(json.dumps(perplexity(args[0], args[1], int(args[2]), int(args[3]))))
    else:
        sys.exit(f"unknown command {cmd}")
