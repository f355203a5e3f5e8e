"""Load generator for `mlxengine serve` (run by bench/server.sh): streamed chat requests
from C concurrent clients, each sending R requests; prints aggregate tokens/s and
latency percentiles per concurrency level as a table and JSON."""

import json
import statistics
import sys
import threading
import time

import openai

base, model, max_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
levels = [int(x) for x in sys.argv[4].split(",")]
per_client = int(sys.argv[5])
client = openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0, timeout=600)


def one(i):
    t0 = time.perf_counter()
    ttft, tokens = None, 0
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": f"Write a long story about lighthouse number {i}."}],
        temperature=0.7, seed=i, max_tokens=max_tokens, stream=True, stream_options={"include_usage": True})
    for chunk in stream:
        if ttft is None and chunk.choices and chunk.choices[0].delta.content:
            ttft = time.perf_counter() - t0
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return time.perf_counter() - t0, ttft or 0.0, tokens


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


one(0)  # warm-up: model load, caches
rows = []
for c in levels:
    results, lock = [], threading.Lock()

    def client_loop(k):
        for r in range(per_client):
            res = one(k * 1000 + r)
            with lock:
                results.append(res)

    threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(c)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = [r[0] for r in results]
    ttft = [r[1] for r in results]
    tokens = sum(r[2] for r in results)
    rows.append({
        "concurrency": c, "requests": len(results), "tokens": tokens, "wall_s": wall,
        "aggregate_tok_s": tokens / wall,
        "per_stream_tok_s": statistics.median(r[2] / max(r[0] - r[1], 1e-9) for r in results),
        "latency_p50_s": pct(lat, 50), "latency_p99_s": pct(lat, 99),
        "ttft_p50_s": pct(ttft, 50), "ttft_p99_s": pct(ttft, 99),
    })

print(f"{'streams':>8} {'requests':>9} {'agg tok/s':>10} {'per-stream':>11} {'lat p50':>8} {'lat p99':>8} {'ttft p50':>9} {'ttft p99':>9}")
for r in rows:
    print(f"{r['concurrency']:>8} {r['requests']:>9} {r['aggregate_tok_s']:>10.1f} {r['per_stream_tok_s']:>11.1f} "
          f"{r['latency_p50_s']:>8.2f} {r['latency_p99_s']:>8.2f} {r['ttft_p50_s']:>9.3f} {r['ttft_p99_s']:>9.3f}")
base_tps = rows[0]["aggregate_tok_s"]
for r in rows[1:]:
    print(f"batching speed-up at {r['concurrency']} streams vs {rows[0]['concurrency']}: {r['aggregate_tok_s'] / base_tps:.2f}x")
print(json.dumps(rows))
