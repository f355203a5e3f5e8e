"""The soak's clients (bench/soak.sh): python soak.py URL PID MINUTES CLIENTS.

Each client loops over a random mix of operations until the time is up. What each
answer must be is known beforehand: chat and completion prompts are about one number and
their greedy answers were taken once, alone, at warm-up (an answer must name its own
number); embeddings must match their warm-up vectors (cosine >= 0.999: batch composition
changes the float sums, not the vector). Bad requests must get their 4xx. Every response
is counted by endpoint and status and compared with the server's /metrics at the end.
Exit status 1 on any unexpected outcome."""

import collections
import json
import math
import random
import sys
import threading
import time
import urllib.error
import urllib.request

BASE, PID, MINUTES, CLIENTS = sys.argv[1].rstrip("/"), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
LLM, EMB = "smollm2-135m-instruct", "all-minilm-l6-v2"
NUMBERS = [3, 7, 12, 19, 25, 42, 58, 64, 77, 88, 99, 101, 256, 365, 500, 1000]
counts = collections.Counter()  # (endpoint, status) as the server labels them
outcomes = collections.Counter()
failures = []
lock = threading.Lock()


def http(method, path, body=None, raw=None, timeout=300):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(BASE + path, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def count(endpoint, status, outcome):
    with lock:
        counts[(endpoint, str(status))] += 1
        outcomes[outcome] += 1


def fail(msg):
    with lock:
        failures.append(msg)
    print("FAIL", msg, file=sys.stderr, flush=True)


def chat_body(n, stream=False, max_tokens=24):
    return {"model": LLM, "messages": [{"role": "user", "content": f"Write one sentence about the number {n}."}],
            "temperature": 0, "max_tokens": max_tokens, "stream": stream}


def names(text, n):
    t = text.replace(",", " ")
    return str(n) in t.split() or f"{n}." in t or f"{n}'" in t


def stream_chat(n, stop_after=None):
    """Text of a streamed chat answer (None when we hung up after `stop_after` chunks)."""
    req = urllib.request.Request(BASE + "/v1/chat/completions", data=json.dumps(chat_body(n, True)).encode(),
                                 headers={"content-type": "application/json"})
    text, chunks = "", 0
    with urllib.request.urlopen(req, timeout=300) as r:
        status = r.status
        for line in r:
            line = line.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            ev = json.loads(line[6:])
            for c in ev.get("choices", []):
                text += c.get("delta", {}).get("content") or ""
            chunks += 1
            if stop_after is not None and chunks >= stop_after:
                return status, None
    return status, text


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def rss_mb():
    with open(f"/proc/{PID}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def metric_counts():
    status, text = http("GET", "/metrics")
    assert status == 200, status
    out = collections.Counter()
    for line in text.splitlines():
        if line.startswith("mlxengine_requests_total{"):
            labels = dict(kv.split("=", 1) for kv in line[line.index("{") + 1:line.index("}")].split(","))
            ep, st = labels["endpoint"].strip('"'), labels["status"].strip('"')
            out[(ep, st)] += int(float(line.rsplit(" ", 1)[1]))
    return out


# --- warm-up: the expected answers, one request at a time ------------------------------------
expect_chat, expect_text, expect_vec = {}, {}, {}
for n in NUMBERS:
    status, body = http("POST", "/v1/chat/completions", chat_body(n))
    assert status == 200, (status, body)
    text = json.loads(body)["choices"][0]["message"]["content"]
    if names(text, n):  # only prompts whose answer names the number can check that
        expect_chat[n] = text
    status, body = http("POST", "/v1/embeddings", {"model": EMB, "input": f"A sentence about the number {n}."})
    assert status == 200, (status, body)
    expect_vec[n] = json.loads(body)["data"][0]["embedding"]
assert len(expect_chat) >= 8, f"only {len(expect_chat)} prompts name their number alone: {expect_chat}"
CHAT_NUMBERS = sorted(expect_chat)
base_counts = metric_counts()
print(f"warm-up: {len(CHAT_NUMBERS)}/{len(NUMBERS)} prompts name their number when alone; rss {rss_mb():.0f} MB",
      flush=True)

deadline = time.time() + MINUTES * 60
BAD = [  # (body, expected status)
    (b"{not json", 400),
    (json.dumps({"model": LLM, "messages": []}).encode(), 400),
    (json.dumps({"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}).encode(), 404),
    (json.dumps({"model": LLM, "messages": [{"role": "user", "content": "hi"}], "n": 0}).encode(), 400),
    (json.dumps({"model": LLM, "messages": [{"role": "user", "content": "hi"}], "temperature": 9}).encode(), 400),
]


def client(k):
    rnd = random.Random(k)
    while time.time() < deadline:
        op = rnd.choices(["stream", "chat", "completion", "embed", "disconnect", "bad", "admin"],
                         [30, 15, 15, 20, 10, 8, 2])[0]
        n = rnd.choice(CHAT_NUMBERS)
        try:
            if op == "stream":
                status, text = stream_chat(n)
                count("/v1/chat/completions", status, op)
                if status != 200 or not names(text, n):
                    fail(f"stream {n}: {status} {text!r}")
            elif op == "chat":
                status, body = http("POST", "/v1/chat/completions", chat_body(n))
                count("/v1/chat/completions", status, op)
                text = json.loads(body)["choices"][0]["message"]["content"] if status == 200 else body
                if status != 200 or not names(text, n):
                    fail(f"chat {n}: {status} {text!r}")
            elif op == "completion":
                status, body = http("POST", "/v1/completions", {"model": LLM, "prompt": f"The number {n} is",
                                                                "temperature": 0, "max_tokens": 16})
                count("/v1/completions", status, op)
                if status != 200 or not json.loads(body)["choices"][0]["text"]:
                    fail(f"completion {n}: {status} {body[:200]}")
            elif op == "embed":
                ns = rnd.sample(NUMBERS, rnd.randint(1, 8))
                status, body = http("POST", "/v1/embeddings",
                                    {"model": EMB, "input": [f"A sentence about the number {m}." for m in ns]})
                count("/v1/embeddings", status, op)
                if status != 200:
                    fail(f"embed {ns}: {status} {body[:200]}")
                else:
                    for m, d in zip(ns, json.loads(body)["data"]):
                        c = cosine(d["embedding"], expect_vec[m])
                        if c < 0.999:
                            fail(f"embed {m}: cosine {c} to its warm-up vector")
            elif op == "disconnect":
                status, _ = stream_chat(n, stop_after=2)
                count("/v1/chat/completions", status, op)
            elif op == "bad":
                raw, want = rnd.choice(BAD)
                status, body = http("POST", "/v1/chat/completions", raw=raw)
                count("/v1/chat/completions", status, op)
                if status != want or "error" not in json.loads(body):
                    fail(f"bad request {raw[:60]!r}: {status} (wanted {want}) {body[:200]}")
            elif op == "admin":
                model = rnd.choice([LLM, EMB])
                for action in ("unload", "load"):
                    status, body = http("POST", f"/v1/models/{action}", {"model": model})
                    count(f"/v1/models/{action}", status, op)
                    if status != 200:
                        fail(f"{action} {model}: {status} {body[:200]}")
        except Exception as e:  # noqa: BLE001 - every surprise is a failure
            fail(f"{op} {n}: {e!r}")


threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(CLIENTS)]
t0 = time.time()
for t in threads:
    t.start()
curve = []
while any(t.is_alive() for t in threads):
    curve.append((round(time.time() - t0), round(rss_mb())))
    print(f"t={curve[-1][0]:4d} s  rss {curve[-1][1]} MB  done {sum(outcomes.values())}  failures {len(failures)}",
          flush=True)
    end = time.time() + 30
    while time.time() < end and any(t.is_alive() for t in threads):
        time.sleep(0.5)
curve.append((round(time.time() - t0), round(rss_mb())))
time.sleep(1)
server = metric_counts()
for key, n in counts.items():
    got = server[key] - base_counts[key]
    if got != n:
        fail(f"/metrics says {got} for {key}, the clients counted {n}")
after = [r for t, r in curve if t >= 120] or [r for _, r in curve]
report = {"minutes": MINUTES, "clients": CLIENTS, "operations": dict(outcomes), "requests": sum(counts.values()),
          "failures": len(failures), "rss_mb_curve": curve,
          "rss_mb_after_warmup": {"min": min(after), "max": max(after)}}
print(json.dumps(report))
if failures:
    print("\n".join(failures[:20]), file=sys.stderr)
    sys.exit(1)
