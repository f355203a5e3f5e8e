"""Load generator for an OpenAI-compatible server (run by bench/server.sh, against
`mlxengine serve` and llama.cpp's `llama-server` alike): streamed chat requests from C
concurrent clients, each sending R requests; prints aggregate tokens/s and latency
percentiles per concurrency level as a table, then the rows as JSON on the last line.
Standard library only (it runs on the GPU machine, which has no package index).

    server_load.py URL MODEL MAX_TOKENS LEVELS PER_CLIENT [MODE]

WARM_LEVELS=1 in the environment runs each level once unmeasured first (GPU kernels are
compiled on a shape's first use). MODE (default `unique`):
  unique   a ~130-token chat prompt made unique at its start per request, greedy: no
           prefix to share but the chat template's header
  shared   one prompt for every request, sampled at temperature 0.7 without a seed: a
           server's prompt cache can reuse the prompt, nothing can reuse an answer
  greedy   one prompt for every request, greedy: a server that records deterministic
           answers (mlxengine's prompt cache) replays them
"""

import json
import os
import statistics
import sys
import threading
import time

from openai_stream import chat_stream

base, model, max_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
levels = [int(x) for x in sys.argv[4].split(",")]
per_client = int(sys.argv[5])
mode = sys.argv[6] if len(sys.argv) > 6 else "unique"
assert mode in ("unique", "shared", "greedy"), mode

NOTES = (
    "The lighthouse stands on a basalt cliff above a cold northern harbour. Its keeper "
    "records the weather every four hours: wind direction and force, sea state, cloud, "
    "visibility and the barometer. Supply boats come twice a month when the sea allows. "
    "In winter the lamp burns for sixteen hours a night, and the keeper trims the wick, "
    "polishes the lens and winds the clockwork that turns it. Write a long story about "
    "one night there, told by the keeper."
)


def one(i):
    if mode == "unique":
        content, sampling = f"Request {i}. {NOTES}", {"temperature": 0}
    elif mode == "shared":
        content, sampling = NOTES, {"temperature": 0.7}
    else:
        content, sampling = NOTES, {"temperature": 0}
    t0 = time.perf_counter()
    ttft, tokens, chunks, last, gaps = None, 0, 0, None, []
    body = {"model": model, "messages": [{"role": "user", "content": content}],
            "max_tokens": max_tokens, "stream": True,
            "stream_options": {"include_usage": True}, **sampling}
    for chunk in chat_stream(base, body):
        choices = chunk.get("choices") or []
        if choices and (choices[0].get("delta") or {}).get("content"):
            chunks += 1
            now = time.perf_counter()
            if ttft is None:
                ttft = now - t0
            else:
                gaps.append(now - last)
            last = now
        if chunk.get("usage"):
            tokens = chunk["usage"].get("completion_tokens", 0)
    return time.perf_counter() - t0, ttft or 0.0, tokens or chunks, gaps


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def level(c, first):
    """C clients sending PER requests each (request numbers from FIRST); the results and
    the wall time. A request the server drops (connection reset, error status) counts as
    failed, not as tokens."""
    results, failed, lock = [], [], threading.Lock()

    def client_loop(k):
        for r in range(per_client):
            try:
                res = one(first + k * 1000 + r)
            except (OSError, RuntimeError) as e:
                with lock:
                    failed.append(repr(e))
                continue
            with lock:
                results.append(res)

    threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(c)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
        time.sleep(0.005)  # clients arrive 5 ms apart, not in one burst of connections
    for t in threads:
        t.join()
    return results, failed, time.perf_counter() - t0


one(-1)  # warm-up: model load, caches
rows = []
for c in levels:
    if os.environ.get("WARM_LEVELS"):
        # Each batch size once unmeasured: GPU kernels are compiled on first use of a shape.
        level(c, 10_000_000)
    results, failed, wall = level(c, 0)
    lat = [r[0] for r in results]
    ttft = [r[1] for r in results]
    tokens = sum(r[2] for r in results)
    gaps = [g for r in results for g in r[3]] or [0.0]
    rows.append({
        "mode": mode, "concurrency": c, "requests": len(results), "failed": len(failed),
        "tokens": tokens, "wall_s": wall,
        "aggregate_tok_s": tokens / wall,
        "per_stream_tok_s": statistics.median(r[2] / max(r[0] - r[1], 1e-9) for r in results),
        "latency_p50_s": pct(lat, 50), "latency_p99_s": pct(lat, 99),
        "ttft_p50_s": pct(ttft, 50), "ttft_p99_s": pct(ttft, 99),
        "itl_p50_ms": 1e3 * pct(gaps, 50), "itl_p99_ms": 1e3 * pct(gaps, 99),
    })

print(f"{'mode':>7} {'streams':>8} {'requests':>9} {'agg tok/s':>10} {'per-stream':>11} {'lat p50':>8} {'lat p99':>8} {'ttft p50':>9} {'ttft p99':>9} {'itl p99 ms':>10} {'failed':>6}")
for r in rows:
    print(f"{r['mode']:>7} {r['concurrency']:>8} {r['requests']:>9} {r['aggregate_tok_s']:>10.1f} {r['per_stream_tok_s']:>11.1f} "
          f"{r['latency_p50_s']:>8.2f} {r['latency_p99_s']:>8.2f} {r['ttft_p50_s']:>9.3f} {r['ttft_p99_s']:>9.3f} {r['itl_p99_ms']:>10.1f} {r['failed']:>6}")
print(json.dumps(rows))
