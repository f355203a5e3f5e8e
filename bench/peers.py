#!/usr/bin/env python3
"""The peers of bench/run_all.sh, measured like `mlxengine bench` / `bench-embed` measure
MLXEngine (same prompts, same sentences, warm-up first, median / min / max), printing one
JSON object in the same shape.

  peers.py quantize SRC.gguf DST.gguf q4_0|f16           llama.cpp's quantizer
  peers.py llama MODEL.gguf PROMPT_WORDS NEW RUNS THREADS  llama.cpp (llama-cpp-python)
  peers.py mlx_lm HF_DIR PROMPT_WORDS NEW RUNS DTYPE       mlx-lm
  peers.py st MODEL_DIR BATCHES RUNS                       sentence-transformers
"""
import json, resource, statistics, sys, time

WORDS = ("the river carried old stories past quiet towns where people still remember "
         "long summer nights and").split()


def prompt(n):
    """The synthetic prompt of `mlxengine bench --prompt-tokens n`."""
    return " ".join(WORDS[i % len(WORDS)] for i in range(max(n, 1)))


def sentences(n):
    """The sentences of `mlxengine bench-embed` (host/src/cli/bench.rs)."""
    subj = ["The old fisherman", "A young teacher", "Our neighbor", "The small robot",
            "My sister", "The city council", "A tired traveler", "The orchestra"]
    verb = ["carefully repaired", "quietly watched", "happily painted", "slowly read",
            "proudly presented", "suddenly found", "patiently explained", "eagerly described"]
    obj = ["the broken wooden boat", "a map of the northern coast", "the letters from last winter",
           "an unusual green stone", "the plans for the new bridge", "a song about the river",
           "the results of the long experiment", "a box of forgotten photographs"]
    tail = ["before sunrise.", "in the afternoon.", "near the harbor.", "after dinner."]
    return [f"{subj[i % 8]} {verb[(i // 8) % 8]} {obj[(i // 64) % 8]} {tail[(i // 512 + i) % 4]}"
            for i in range(n)]


def stat(v):
    return {"median": statistics.median(v), "min": min(v), "max": max(v)}


def peak_rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def quantize(src, dst, kind):
    import llama_cpp
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = {"q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0, "f16": llama_cpp.LLAMA_FTYPE_MOSTLY_F16}[kind]
    p.allow_requantize = True
    if llama_cpp.llama_model_quantize(src.encode(), dst.encode(), p) != 0:
        sys.exit(f"quantizing {src} to {kind} failed")


def llama(path, words, new, runs, threads):
    from llama_cpp import Llama
    # The ggml provider's CPU settings (plugins/llm-ggml/src/settings.rs): flash attention
    # on, f16 KV cache (llama.cpp's default type), one thread per physical core.
    llm = Llama(model_path=path, n_ctx=2048, n_threads=threads, n_threads_batch=threads,
                n_batch=512, flash_attn=True, verbose=False)
    toks = llm.tokenize(prompt(words).encode(), add_bos=True)

    def run(m):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(toks)
        tok = llm.sample(temp=0.0)
        t1 = time.perf_counter()
        for _ in range(m - 1):
            llm.eval([tok])
            tok = llm.sample(temp=0.0)
        t2 = time.perf_counter()
        return (t1 - t0) * 1e3, len(toks) / (t1 - t0), (m - 1) / (t2 - t1)

    run(8)
    res = [run(new) for _ in range(runs)]
    return {"prompt_tokens": len(toks), "generated_tokens": new,
            "ttft_ms": stat([r[0] for r in res]), "prefill_tps": stat([r[1] for r in res]),
            "decode_tps": stat([r[2] for r in res]), "peak_memory_bytes": {"median": peak_rss()}}


def mlx_lm(path, words, new, runs, dtype):
    import mlx.core as mx
    from mlx_lm import load, stream_generate
    model, tok = load(path)
    if dtype != "float32":
        model.set_dtype(getattr(mx, dtype))
    text = prompt(words)

    def run(m):
        t0 = time.perf_counter()
        ttft, last = None, None
        for r in stream_generate(model, tok, text, max_tokens=m):
            if ttft is None:
                ttft = (time.perf_counter() - t0) * 1e3
            last = r
        return ttft, last.prompt_tps, last.generation_tps, last.prompt_tokens

    run(8)
    res = [run(new) for _ in range(runs)]
    return {"prompt_tokens": res[0][3], "generated_tokens": new,
            "ttft_ms": stat([r[0] for r in res]), "prefill_tps": stat([r[1] for r in res]),
            "decode_tps": stat([r[2] for r in res]), "peak_memory_bytes": {"median": peak_rss()}}


def st(path, batches, runs):
    from sentence_transformers import SentenceTransformer
    model = SentenceTransformer(path, device="cpu")
    out = []
    for b in batches:
        pool = sentences(max(b, 256))
        model.encode(pool[:b], batch_size=b)
        calls = max(runs, -(-256 // b))
        per_s = []
        for c in range(calls):
            start = (c * b) % len(pool)
            batch = (pool[start:] + pool)[:b]
            t = time.perf_counter()
            model.encode(batch, batch_size=b)
            per_s.append(b / (time.perf_counter() - t))
        out.append({"batch": b, "calls": calls, "sentences_per_s": stat(per_s)})
    return {"results": out, "peak_rss_bytes": peak_rss()}


if __name__ == "__main__":
    cmd, a = sys.argv[1], sys.argv[2:]
    if cmd == "quantize":
        quantize(a[0], a[1], a[2])
    elif cmd == "llama":
        print(json.dumps(llama(a[0], int(a[1]), int(a[2]), int(a[3]), int(a[4]))))
    elif cmd == "mlx_lm":
        print(json.dumps(mlx_lm(a[0], int(a[1]), int(a[2]), int(a[3]), a[4])))
    elif cmd == "st":
        print(json.dumps(st(a[0], [int(x) for x in a[1].split(",")], int(a[2]))))
    else:
        sys.exit(__doc__)
