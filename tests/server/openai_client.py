"""Drive `mlxengine serve` with the official `openai` client (and raw HTTP where the
client hides what is checked). Run by tests/server.rs:

    python openai_client.py SCENARIO BASE_URL [ARGS...]

Each scenario asserts what it checks and prints one JSON line of results that the Rust
test compares with the CLI. A failed check exits non-zero with the reason.
"""

import base64
import json
import os
import signal
import struct
import sys
import threading
import time
import urllib.error
import urllib.request

import openai
from prometheus_client.parser import text_string_to_metric_families

SCENARIO, BASE = sys.argv[1], sys.argv[2].rstrip("/")
ARGS = sys.argv[3:]
KEY = os.environ.get("MLXENGINE_TEST_KEY", "none")
client = openai.OpenAI(base_url=BASE + "/v1", api_key=KEY, max_retries=0, timeout=120)
LLM = os.environ.get("MLXENGINE_TEST_LLM", "smollm2-135m-instruct")
QUESTION = "What is the capital of France?"


def http(method, path, body=None, headers=None, raw=None):
    """(status, headers, parsed JSON or text) of one request, errors included."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    h = {"content-type": "application/json"}
    h.update(headers or {})
    req = urllib.request.Request(BASE + path, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            status, hdrs, text = r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        status, hdrs, text = e.code, dict(e.headers), e.read().decode()
    try:
        return status, hdrs, json.loads(text)
    except ValueError:
        return status, hdrs, text


def metrics():
    status, _, text = http("GET", "/metrics")
    assert status == 200, status
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    return fams


def sample(fams, family, sample_name=None, **labels):
    f = fams.get(family)
    if f is None:
        return 0.0
    total = 0.0
    for s in f.samples:
        if sample_name and s.name != sample_name:
            continue
        if all(s.labels.get(k) == v for k, v in labels.items()):
            total += s.value
    return total


def chat_stream(messages, model=LLM, **kw):
    stream = client.chat.completions.create(model=model, messages=messages, stream=True, **kw)
    text, finish, usage, roles = "", None, None, 0
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.role:
                roles += 1
            text += c.delta.content or ""
            finish = c.finish_reason or finish
    return text, finish, usage, roles


def scenario_api():
    msgs = [{"role": "user", "content": QUESTION}]
    r = client.chat.completions.create(model=LLM, messages=msgs, temperature=0, seed=7, max_tokens=24)
    assert r.object == "chat.completion" and r.model == LLM, r
    c = r.choices[0]
    assert c.message.role == "assistant" and c.finish_reason in ("stop", "length"), c
    assert r.usage.completion_tokens > 0 and r.usage.prompt_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    text, finish, usage, roles = chat_stream(
        msgs, temperature=0, seed=7, max_tokens=24, stream_options={"include_usage": True}
    )
    assert text == c.message.content, (text, c.message.content)
    assert finish == c.finish_reason and roles == 1, (finish, roles)
    assert usage is not None and usage.completion_tokens == r.usage.completion_tokens, usage
    # n > 1 with a seed: n choices, each reproducible.
    rn = client.chat.completions.create(model=LLM, messages=msgs, temperature=0.8, seed=3, n=3, max_tokens=12)
    assert [ch.index for ch in rn.choices] == [0, 1, 2]
    rn2 = client.chat.completions.create(model=LLM, messages=msgs, temperature=0.8, seed=3, n=3, max_tokens=12)
    assert [ch.message.content for ch in rn.choices] == [ch.message.content for ch in rn2.choices]
    # Logprobs of the chosen tokens.
    rl = client.chat.completions.create(model=LLM, messages=msgs, temperature=0, max_tokens=5, logprobs=True)
    lps = rl.choices[0].logprobs.content
    assert len(lps) == rl.usage.completion_tokens and all(t.logprob <= 0 for t in lps), lps
    # Stop strings.
    rs = client.chat.completions.create(model=LLM, messages=msgs, temperature=0, max_tokens=24, stop=["Paris"])
    assert "Paris" not in rs.choices[0].message.content
    # Text completions, plain and streamed.
    cp = client.completions.create(model=LLM, prompt="The capital of France is", temperature=0, max_tokens=12)
    assert cp.object == "text_completion" and cp.choices[0].text, cp
    streamed = "".join(
        ch.choices[0].text
        for ch in client.completions.create(
            model=LLM, prompt="The capital of France is", temperature=0, max_tokens=12, stream=True
        )
        if ch.choices
    )
    assert streamed == cp.choices[0].text, (streamed, cp.choices[0].text)
    # Embeddings: float and base64 agree.
    texts = ["A man is eating food.", "A man is eating a piece of bread."]
    e = client.embeddings.create(model="all-minilm-l6-v2", input=texts)
    assert [d.index for d in e.data] == [0, 1] and len(e.data[0].embedding) == 384
    assert e.usage.prompt_tokens > 0
    status, _, b = http("POST", "/v1/embeddings", {"model": "all-minilm-l6-v2", "input": texts[0], "encoding_format": "base64"})
    assert status == 200, b
    vec = struct.unpack("<384f", base64.b64decode(b["data"][0]["embedding"]))
    assert max(abs(x - y) for x, y in zip(vec, e.data[0].embedding)) < 1e-6
    # A K-quant GGUF (Gemma 3 270M, Q4_K_M; its GGUF has no chat template) completes text.
    g = client.completions.create(model="gemma3-270m", prompt="The capital of France is", temperature=0, max_tokens=16)
    assert "France" in g.choices[0].text and g.usage.completion_tokens == 16, g.choices[0].text
    # Models.
    ids = [m.id for m in client.models.list().data]
    assert LLM in ids and "all-minilm-l6-v2" in ids, ids
    assert client.models.retrieve(LLM).id == LLM
    print(json.dumps({
        "chat": c.message.content,
        "chat_finish": c.finish_reason,
        "completion": cp.choices[0].text,
        "embedding": e.data[0].embedding,
    }))


def scenario_preloaded():
    """Every model in ARGS, loaded before the server listened (on another thread than
    the worker that serves it), answers: chat plain and streamed alike, and a completion."""
    out = {}
    for model in ARGS:
        msgs = [{"role": "user", "content": QUESTION}]
        r = client.chat.completions.create(model=model, messages=msgs, temperature=0, max_tokens=8)
        text = r.choices[0].message.content
        assert text and r.usage.completion_tokens > 0, r
        streamed, _, _, _ = chat_stream(msgs, model=model, temperature=0, max_tokens=8)
        assert streamed == text, (streamed, text)
        cp = client.completions.create(model=model, prompt="The capital of France is", temperature=0, max_tokens=4)
        assert cp.choices[0].text, cp
        out[model] = text
    print(json.dumps(out))


def scenario_errors():
    checks = []

    def expect(status_want, resp, code=None, param=None, what=""):
        status, hdrs, body = resp
        assert status == status_want, (what, status, body)
        assert isinstance(body, dict) and "error" in body, (what, body)
        err = body["error"]
        assert err["message"] and err["type"], (what, err)
        if code:
            assert err["code"] == code, (what, err)
        if param:
            assert err["param"] == param, (what, err)
        checks.append(what)
        return hdrs, err

    ok = {"model": LLM, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    expect(400, http("POST", "/v1/chat/completions", raw=b"{not json"), what="bad json")
    expect(404, http("POST", "/v1/chat/completions", dict(ok, model="no-such-model")), code="model_not_found", param="model", what="unknown model")
    expect(400, http("POST", "/v1/chat/completions", dict(ok, temperature="hot")), param="temperature", what="wrong type")
    expect(400, http("POST", "/v1/chat/completions", dict(ok, temperature=7)), param="temperature", what="out of range")
    expect(400, http("POST", "/v1/chat/completions", dict(ok, messages=[])), param="messages", what="no messages")
    expect(400, http("POST", "/v1/chat/completions", dict(ok, n=0)), param="n", what="n=0")
    expect(400, http("POST", "/v1/chat/completions", dict(ok, messages=[{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}])),
        param="messages[0].content[1]", what="image part to a text model")
    expect(400, http("POST", "/v1/chat/completions", dict(ok, model="all-minilm-l6-v2")), param="model", what="embed model for chat")
    long_prompt = "hello " * 9000
    expect(400, http("POST", "/v1/chat/completions", dict(ok, messages=[{"role": "user", "content": long_prompt}])),
           code="context_length_exceeded", what="too-long prompt")
    expect(400, http("POST", "/v1/embeddings", {"model": "all-minilm-l6-v2", "input": [1, 2, 3]}), param="input", what="token input")
    # Counts are bounded where the request enters, with a 400 naming the parameter.
    expect(400, http("POST", "/v1/completions", {"model": LLM, "prompt": ["hi"] * 17, "n": 16, "max_tokens": 1}),
           param="n", what="more than 256 sequences")
    expect(400, http("POST", "/v1/embeddings", {"model": "all-minilm-l6-v2", "input": ["x"] * 2049}),
           param="input", what="more than 2048 inputs")
    expect(413, http("POST", "/v1/embeddings", raw=b'{"input": "' + b"x" * (9 << 20) + b'"}'), what="body too large")
    expect(404, http("GET", "/v1/nowhere"), what="unknown route")
    expect(405, http("GET", "/v1/chat/completions"), what="wrong method")
    expect(404, http("GET", "/v1/models/../../etc/passwd"), what="path as model id")
    # The openai client surfaces the same errors as typed exceptions.
    try:
        client.chat.completions.create(model="no-such-model", messages=ok["messages"])
        raise AssertionError("unknown model accepted")
    except openai.NotFoundError as e:
        assert "no-such-model" in str(e)
    # Still serving.
    r = client.chat.completions.create(model=LLM, messages=ok["messages"], max_tokens=2)
    assert r.choices[0].finish_reason in ("stop", "length")
    fams = metrics()
    assert sample(fams, "mlxengine_requests", "mlxengine_requests_total", endpoint="/v1/chat/completions", status="400") >= 7
    assert sample(fams, "mlxengine_requests", "mlxengine_requests_total", endpoint="/v1/completions", status="400") >= 1
    # Unknown model ids answer 404 and add no series: a client cannot grow /metrics.
    for i in range(3):
        expect(404, http("GET", f"/v1/models/ghost-{i}"), what=f"unknown model id {i}")
        expect(404, http("POST", "/v1/models/load", {"model": f"ghost-load-{i}"}), what=f"load unknown {i}")
    fams = metrics()
    labels = {s.labels.get("model", "") for f in fams.values() for s in f.samples}
    assert not any(l.startswith("ghost") or l == "no-such-model" for l in labels), labels
    print(json.dumps({"checked": checks}))


def scenario_auth():
    key = ARGS[0]
    assert http("GET", "/health")[0] == 200, "health needs no key"
    for path in ("/v1/models", "/metrics", "/ready"):
        status, _, body = http("GET", path)
        assert status == 401 and body["error"]["code"] == "invalid_api_key", (path, status, body)
        assert key not in json.dumps(body)
    status, _, _ = http("GET", "/v1/models", headers={"authorization": "Bearer wrong"})
    assert status == 401
    status, _, _ = http("GET", "/v1/models", headers={"authorization": f"Bearer {key}"})
    assert status == 200
    ok = openai.OpenAI(base_url=BASE + "/v1", api_key=key, max_retries=0)
    assert ok.models.list().data
    print(json.dumps({"ok": True}))


def run_concurrent(prompts, max_tokens):
    results = [None] * len(prompts)
    errors = []

    def one(i):
        try:
            text, finish, usage, _ = chat_stream(
                [{"role": "user", "content": prompts[i]}], temperature=0, max_tokens=max_tokens,
                stream_options={"include_usage": True})
            results[i] = (text, finish, usage.completion_tokens)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(f"client {i}: {e!r}")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    t0 = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, errors, time.time() - t0


PROMPTS = [f"Write one sentence about the number {i}." for i in range(16)]


def scenario_concurrency():
    max_tokens = int(ARGS[0]) if ARGS else 32
    # Serial first (one client at a time), then all 16 at once.
    t0 = time.time()
    serial = []
    for p in PROMPTS:
        text, finish, usage, _ = chat_stream([{"role": "user", "content": p}], temperature=0,
                                             max_tokens=max_tokens, stream_options={"include_usage": True})
        serial.append((text, finish, usage.completion_tokens))
    serial_s = time.time() - t0
    results, errors, conc_s = run_concurrent(PROMPTS, max_tokens)
    assert not errors, errors
    assert all(r is not None and r[0] and r[1] in ("stop", "length") for r in results), results
    tokens = sum(r[2] for r in results)
    same = sum(1 for a, b in zip(results, serial) if a[0] == b[0])

    def common_words(a, b):
        n = 0
        for x, y in zip(a.split(), b.split()):
            if x != y:
                break
            n += 1
        return n

    prefix = min(common_words(a[0], b[0]) for a, b in zip(results, serial))
    # Each answer is about its own prompt's number (a sequence reading another's KV cache
    # or a misrouted token would not be).
    own = [i for i, r in enumerate(results) if str(i) in r[0].replace(",", " ").split()
           or f"{i}." in r[0] or f"{i}'" in r[0]]
    fams = metrics()
    assert sample(fams, "mlxengine_active_generations", model=LLM) == 0
    print(json.dumps({
        "clients": len(PROMPTS), "tokens": tokens, "serial_s": serial_s, "concurrent_s": conc_s,
        "serial_tok_s": sum(r[2] for r in serial) / serial_s, "concurrent_tok_s": tokens / conc_s,
        "same_as_serial": same, "min_common_words": prefix, "about_own_number": len(own),
        "not_about_own_number": [results[i][0] for i in range(len(results)) if i not in own],
        "mismatches": [[a[0], b[0]] for a, b in zip(results, serial) if a[0] != b[0]],
    }))


def scenario_identical():
    """Identical greedy requests at once get one answer, the one the prompt gets alone,
    even when the request they follow leaves half-way (another takes over its decode)."""
    msgs = [{"role": "user", "content": "Write a long story about a dragon."}]
    # Long enough that the first request is still decoding when it is closed 0.5 s after
    # the others start, on any CPU: 48 tokens took less than that on a 2-core Sapphire
    # Rapids, and the cancel it checks never happened.
    n = 192
    solo = client.chat.completions.create(model=LLM, messages=msgs, temperature=0, max_tokens=n)
    solo = solo.choices[0].message.content
    cancelled0 = sample(metrics(), "mlxengine_cancelled_generations", "mlxengine_cancelled_generations_total",
                        reason="disconnect")
    first = client.chat.completions.create(model=LLM, messages=msgs, temperature=0, max_tokens=n, stream=True)
    it = iter(first)
    for _ in range(3):
        next(it)  # the first request decodes; the others join it mid-way
    results = [None] * 4
    errors = []

    def one(i):
        try:
            if i % 2:
                text, _, _, _ = chat_stream(msgs, temperature=0, max_tokens=n)
            else:
                r = client.chat.completions.create(model=LLM, messages=msgs, temperature=0, max_tokens=n)
                text = r.choices[0].message.content
            results[i] = text
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(f"client {i}: {e!r}")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    first.close()  # the request the others follow leaves
    for t in threads:
        t.join()
    assert not errors, errors
    assert all(r == solo for r in results), {"solo": solo, "results": results}
    # The first really was cancelled while the others ran on.
    cancelled = sample(metrics(), "mlxengine_cancelled_generations", "mlxengine_cancelled_generations_total",
                       reason="disconnect")
    assert cancelled == cancelled0 + 1, (cancelled0, cancelled)
    print(json.dumps({"answers": len(results), "same_as_alone": sum(r == solo for r in results)}))


def scenario_disconnect():
    before = metrics()
    cancelled0 = sample(before, "mlxengine_cancelled_generations", "mlxengine_cancelled_generations_total", reason="disconnect")
    stream = client.chat.completions.create(model=LLM, messages=[{"role": "user", "content": "Count from 1 to 500."}],
                                            temperature=0, max_tokens=400, stream=True)
    seen = 0
    for _ in stream:
        seen += 1
        if seen == 3:
            break
    stream.close()
    # The slot is freed: no active generation, one more disconnect-cancel, and fewer tokens
    # than asked for.
    deadline = time.time() + 30
    while time.time() < deadline:
        fams = metrics()
        active = sample(fams, "mlxengine_active_generations", model=LLM)
        cancelled = sample(fams, "mlxengine_cancelled_generations", "mlxengine_cancelled_generations_total", reason="disconnect")
        if active == 0 and cancelled == cancelled0 + 1:
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"slot not freed: active={active} cancelled={cancelled} (was {cancelled0})")
    generated = sample(fams, "mlxengine_generated_tokens", "mlxengine_generated_tokens_total", model=LLM)
    assert generated < 400, generated
    # And the server still answers.
    r = client.chat.completions.create(model=LLM, messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert r.choices[0].message.content is not None
    print(json.dumps({"generated_before_cancel": generated}))


def scenario_overload():
    # --max-queue 1 and more clients than the batch has slots: some get 429 + Retry-After.
    statuses, retry_after = [], []
    lock = threading.Lock()

    def one(i):
        status, hdrs, body = http("POST", "/v1/chat/completions", {
            "model": LLM, "messages": [{"role": "user", "content": f"Tell a long story number {i}."}],
            "max_tokens": 120, "temperature": 0})
        with lock:
            statuses.append(status)
            if status == 429:
                assert body["error"]["type"] == "rate_limit_error", body
                retry_after.append(hdrs.get("Retry-After") or hdrs.get("retry-after"))
            else:
                assert status == 200, (status, body)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(28)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses.count(429) > 0 and statuses.count(200) >= 2, statuses
    assert all(r == "1" for r in retry_after), retry_after
    fams = metrics()
    assert sample(fams, "mlxengine_rejected_requests", "mlxengine_rejected_requests_total", reason="queue_full") == statuses.count(429)
    print(json.dumps({"ok": statuses.count(200), "rejected": statuses.count(429)}))


def scenario_timeout():
    # Greedy counting never ends on its own: 400 tokens take several seconds here.
    status, _, body = http("POST", "/v1/completions", {
        "model": LLM, "prompt": "1, 2, 3, 4, 5, 6, 7, 8,", "max_tokens": 400, "temperature": 0})
    assert status == 408 and body["error"]["code"] == "timeout", (status, body)
    # The worker stops the generation at its next token (on a loaded machine the
    # handler's own deadline may answer first): the slot is freed soon after.
    deadline = time.time() + 30
    while time.time() < deadline:
        fams = metrics()
        cancelled = sample(fams, "mlxengine_cancelled_generations", "mlxengine_cancelled_generations_total")
        active = sample(fams, "mlxengine_active_generations", model=LLM)
        if cancelled >= 1 and active == 0:
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"generation not stopped: cancelled={cancelled} active={active}")
    print(json.dumps({"ok": True}))


def scenario_metrics():
    # The same greedy request twice: the second is the prompt cache's recorded answer
    # (OpenAI's usage.prompt_tokens_details.cached_tokens), then a sampled one reuses the
    # prompt's cells only (all but its last token).
    hi = [{"role": "user", "content": "hi"}]
    r1 = client.chat.completions.create(model=LLM, messages=hi, max_tokens=4, temperature=0)
    r2 = client.chat.completions.create(model=LLM, messages=hi, max_tokens=4, temperature=0)
    r3 = client.chat.completions.create(model=LLM, messages=hi, max_tokens=4, temperature=0.7)
    p = r1.usage.prompt_tokens
    cached = [r.usage.prompt_tokens_details.cached_tokens for r in (r1, r2, r3)]
    assert cached == [0, p, p - 1], (cached, p)
    assert r2.choices[0].message.content == r1.choices[0].message.content
    client.embeddings.create(model="all-minilm-l6-v2", input="hi")
    status, hdrs, _ = http("GET", "/metrics")
    assert status == 200 and hdrs["content-type"].startswith("text/plain"), hdrs
    fams = metrics()
    for name in ("mlxengine_requests", "mlxengine_queue_depth", "mlxengine_active_generations",
                 "mlxengine_prompt_tokens", "mlxengine_generated_tokens", "mlxengine_time_to_first_token_seconds",
                 "mlxengine_token_latency_seconds", "mlxengine_model_load_seconds", "mlxengine_memory_resident_bytes"):
        assert name in fams, (name, sorted(fams))
    assert fams["mlxengine_time_to_first_token_seconds"].type == "histogram"
    assert sample(fams, "mlxengine_requests", "mlxengine_requests_total", endpoint="/v1/embeddings", status="200") == 1
    assert sample(fams, "mlxengine_generated_tokens", "mlxengine_generated_tokens_total", model=LLM) >= 1
    assert sample(fams, "mlxengine_time_to_first_token_seconds", "mlxengine_time_to_first_token_seconds_count", model=LLM) == 3
    lookups = "mlxengine_prompt_cache_lookups"
    assert sample(fams, lookups, lookups + "_total", model=LLM, result="miss") == 1
    assert sample(fams, lookups, lookups + "_total", model=LLM, result="hit") == 2
    reused = "mlxengine_prompt_cache_tokens"
    assert sample(fams, reused, reused + "_total", model=LLM) == 2 * p - 1
    assert sample(fams, "mlxengine_memory_resident_bytes") > 10e6
    status, _, body = http("GET", "/ready")
    assert status == 200 and body["status"] == "ready", body
    # Admin: unload and load again.
    status, _, body = http("POST", "/v1/models/unload", {"model": LLM})
    assert status == 200 and body["unloaded"] is True, body
    status, _, body = http("POST", "/v1/models/load", {"model": LLM})
    assert status == 200 and body["loaded"] is True and body["plugin"] == "ggml-llm", body
    status, _, body = http("POST", "/v1/models/load", {"model": "nope"})
    assert status == 404, body
    print(json.dumps({"families": len(fams)}))


def scenario_idle():
    # Started with --idle-unload 1: a used model is unloaded after a second without use.
    client.chat.completions.create(model=LLM, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    client.embeddings.create(model="all-minilm-l6-v2", input="hi")
    loaded = lambda: sorted(m.id for m in client.models.list().data if m.model_extra.get("loaded"))
    assert loaded() == ["all-minilm-l6-v2", LLM], loaded()
    deadline = time.time() + 15
    while loaded() and time.time() < deadline:
        time.sleep(0.2)
    assert loaded() == [], loaded()
    assert sample(metrics(), "mlxengine_models_loaded") == 0
    # It loads again on the next request.
    r = client.chat.completions.create(model=LLM, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert r.choices[0].finish_reason in ("stop", "length")
    print(json.dumps({"ok": True}))


def loaded_models():
    return sorted(m.id for m in client.models.list().data if m.model_extra.get("loaded"))


def scenario_swap():
    # The budget fits either LLM alone, not both: each request swaps the other out.
    texts = {}
    for rnd in range(2):
        for model in (LLM, "gemma3-270m"):
            r = client.completions.create(model=model, prompt="The capital of France is", temperature=0, max_tokens=12)
            assert r.choices[0].text, r
            assert texts.setdefault(model, r.choices[0].text) == r.choices[0].text, (model, rnd)
            assert loaded_models() == [model], (model, loaded_models())
    print(json.dumps({"texts": texts}))


def scenario_over_budget():
    status, _, body = http("POST", "/v1/chat/completions", {"model": LLM, "messages": [{"role": "user", "content": "hi"}]})
    assert status == 503 and body["error"]["code"] == "insufficient_memory", (status, body)
    msg = body["error"]["message"]
    assert "needs about" in msg and "memory budget" in msg, msg
    assert loaded_models() == [], loaded_models()
    # The embedding model fits and still serves.
    e = client.embeddings.create(model="all-minilm-l6-v2", input="hi")
    assert len(e.data[0].embedding) == 384
    print(json.dumps({"message": msg}))


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def scenario_kv_budget():
    """A request's KV cache counts against --memory-budget, and is given back after it."""
    pid = int(ARGS[0])
    hi = [{"role": "user", "content": "hi"}]
    r = client.chat.completions.create(model=LLM, messages=hi, max_tokens=4)
    assert r.choices[0].message.content is not None
    base = rss_mb(pid)
    # 8 × (prompt + 100000), capped by the 8192-token context: ~1.5 GB of KV cache under a
    # 300 MB budget (it used to be taken, and kept).
    status, _, body = http("POST", "/v1/chat/completions", {"model": LLM, "messages": hi, "n": 8, "max_tokens": 100000})
    assert status == 503, (status, body)
    msg = body["error"]["message"]
    assert "KV cache" in msg and "8 sequence(s)" in msg and "--memory-budget" in msg, msg
    assert rss_mb(pid) < base + 50, (base, rss_mb(pid))
    # One that fits but needs more than the working context: 6000 tokens take a context of
    # 6144 cells instead of the working 4096, ~23 KB of f16 cache each for SmolLM2 (30
    # layers x 2 x 3 KV heads x 64 x 2 bytes), zeroed at allocation and so resident:
    # ~47 MB more while it runs. A context over the working size is freed when its batch
    # ends (it used to be kept): after, the process holds no context at all, ~94 MB less
    # than at `base` (which held the working one).
    stream = client.chat.completions.create(model=LLM, messages=hi, max_tokens=6000, stream=True)
    for i, _ in enumerate(stream):
        if i == 2:
            during = rss_mb(pid)
            break
    stream.close()
    deadline = time.time() + 30
    while time.time() < deadline:
        after = rss_mb(pid)
        if after < base - 60:
            break
        time.sleep(0.1)
    assert during > base + 30 and after < base - 60, (base, during, after)
    # And ordinary requests are served as before.
    r = client.chat.completions.create(model=LLM, messages=hi, max_tokens=4)
    assert r.choices[0].message.content is not None
    print(json.dumps({"rss_mb": {"base": base, "during": during, "after": after}, "message": msg}))


def scenario_embed_limits():
    """Embeddings are bounded like generation: --max-queue in flight, --request-timeout."""
    big = {"model": "all-minilm-l6-v2", "input": ["word " * 200] * 2048}
    first = {}

    def slow():
        first["resp"] = http("POST", "/v1/embeddings", big)

    t = threading.Thread(target=slow)
    t0 = time.time()
    t.start()
    time.sleep(0.5)
    # The first request holds the only slot (2048 texts of 200 words take far longer than
    # the timeout on any CPU): the second is refused at once.
    status, hdrs, body = http("POST", "/v1/embeddings", {"model": "all-minilm-l6-v2", "input": "hi"})
    assert status == 429 and body["error"]["code"] == "queue_full", (status, body)
    assert {k.lower(): v for k, v in hdrs.items()}.get("retry-after") == "1", hdrs
    t.join()
    status, _, body = first["resp"]
    took = time.time() - t0
    assert status == 408 and body["error"]["code"] == "timeout", (status, body)
    assert took < 30, took
    # The timed-out work stops at its next chunk of texts (the slot used to stay taken
    # until all 2048 were embedded, a minute and more here).
    freed = wait_for_slot()
    # So does the work of a client that disconnects.
    t0 = time.time()
    try:
        urllib.request.urlopen(urllib.request.Request(BASE + "/v1/embeddings", data=json.dumps(big).encode(),
                               headers={"content-type": "application/json"}), timeout=1.5)
    except Exception:
        pass
    left_at = time.time() - t0
    freed_after_disconnect = wait_for_slot()
    print(json.dumps({"timeout_after_s": took, "slot_freed_after_timeout_s": freed,
                      "left_after_s": left_at, "slot_freed_after_disconnect_s": freed_after_disconnect}))


def wait_for_slot():
    """Seconds until a small embedding request is served (not 429), at most 25."""
    t0 = time.time()
    while time.time() - t0 < 25:
        status, _, body = http("POST", "/v1/embeddings", {"model": "all-minilm-l6-v2", "input": "hi"})
        if status == 200:
            return time.time() - t0
        assert status == 429, (status, body)
        time.sleep(0.2)
    raise AssertionError("the slot was still taken 25 s later")


def scenario_shutdown():
    pid = int(ARGS[0])
    stream = client.chat.completions.create(model=LLM, messages=[{"role": "user", "content": "Count from 1 to 100."}],
                                            temperature=0, max_tokens=60, stream=True)
    finish, text = None, ""
    for i, chunk in enumerate(stream):
        if i == 1:
            os.kill(pid, signal.SIGTERM)
        for c in chunk.choices:
            text += c.delta.content or ""
            finish = c.finish_reason or finish
    # The in-flight request finished normally within the deadline.
    assert finish == "length", (finish, text)
    print(json.dumps({"finish": finish}))

def scenario_lora():
    """Adapter A (`pirate`, as the model), adapter B (`pirate-half`, named in the
    `adapter` field of a request on the base) and the bare base, all at once on one base:
    each gets its own answer, as it does one by one; adapters load and unload while
    requests run; bad adapters are clear errors and the base keeps serving."""
    fixture = ARGS[0]
    prompts = ["What is the largest ocean on Earth?", "How do plants make food?",
               "What is the capital of France?"]
    kinds = [("pirate", None), (LLM, "pirate-half"), (LLM, None)]

    def ask(model, adapter, prompt, max_tokens=16):
        extra = {"adapter": adapter} if adapter else {}
        r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                           temperature=0, max_tokens=max_tokens, extra_body=extra)
        return r.model, r.choices[0].message.content

    jobs = [(m, a, p) for p in prompts for (m, a) in kinds]
    alone = [ask(*j) for j in jobs]
    together = [None] * len(jobs)
    errors = []

    def one(i):
        try:
            together[i] = ask(*jobs[i])
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(f"{jobs[i]}: {e!r}")

    # While they run, another adapter is registered, loaded, used and unloaded.
    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    st, _, body = http("POST", "/v1/adapters/load",
                       {"id": "pirate-2", "base": LLM, "path": fixture, "scale": 1.0})
    assert st == 200 and body["loaded"], (st, body)
    _, text2 = ask("pirate-2", None, prompts[0])
    st, _, body = http("POST", "/v1/adapters/unload", {"id": "pirate-2"})
    assert st == 200 and body["unloaded"] is True, (st, body)
    for t in threads:
        t.join()
    assert not errors, errors
    pirate = lambda t: t.startswith("Arr, matey!")
    for (m, a, p), (rm, t1), (_, t2) in zip(jobs, alone, together):
        # The response names the model asked for (the lora entry, or the base).
        assert rm == m, (rm, m)
        # Adapter A always answers as the pirate, the base never does; every request's
        # answer in the crowd is the kind it got alone (llama.cpp is not batch-invariant:
        # the words may drift later, the adapter's opening, decided by gaps of ~10
        # logits, cannot).
        if m == "pirate":
            assert pirate(t1) and pirate(t2), (t1, t2)
        if a is None and m == LLM:
            assert not pirate(t1) and not pirate(t2), (t1, t2)
        assert pirate(t1) == pirate(t2), (m, a, p, t1, t2)
        assert t1.split()[:3] == t2.split()[:3], (m, a, p, t1, t2)
    assert pirate(text2), text2
    st, _, body = http("GET", "/v1/adapters")
    ids = {a["id"]: a for a in body["data"]}
    assert ids["pirate"]["loaded"] and ids["pirate-half"]["loaded"] and not ids["pirate-2"]["loaded"], ids
    assert ids["pirate"]["loaded_on"] == [LLM], ids

    # An adapter nobody used yet, asked for while a long base request runs: it waits for
    # the running batch to end, loads, and answers (it is not refused as "not loaded").
    long = threading.Thread(target=ask, args=(LLM, None, "Count from 1 to 200.", 200))
    long.start()
    time.sleep(0.5)
    _, late = ask("pirate-late", None, prompts[1])
    long.join()
    assert pirate(late), late

    # Errors name the adapter; the base serves on after each.
    def status_of(body_):
        st_, _, b = http("POST", "/v1/chat/completions", body_)
        return st_, json.dumps(b)
    q = {"model": LLM, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    st, msg = status_of(dict(q, adapter="nope"))
    assert st == 404 and "nope" in msg, (st, msg)
    st, msg = status_of(dict(q, adapter={"id": "pirate", "scale": "big"}))
    assert st == 400 and "scale" in msg, (st, msg)
    st, msg = status_of(dict(q, adapter=LLM))
    assert st == 400 and "not a `lora` adapter" in msg, (st, msg)
    st, _, body = http("POST", "/v1/adapters/load", {"id": "broken", "base": LLM, "path": ARGS[1]})
    assert st >= 400 and "broken" in json.dumps(body), (st, body)
    st, _, body = http("POST", "/v1/adapters/load", {"id": "elsewhere", "base": LLM, "path": "/nonexistent"})
    assert st >= 400 and "/nonexistent" in json.dumps(body), (st, body)
    st, msg = status_of(q)
    assert st == 200, (st, msg)
    print(json.dumps({"jobs": len(jobs), "alone": [t for _, t in alone], "together": [t for _, t in together]}))


def scenario_failover():
    """Through a load balancer (BASE) in front of replicas whose pids are ARGS[0] and
    ARGS[1]: 8 clients stream 4 requests each; once streams run, the first replica is
    killed (SIGKILL: its running streams are cut) and half a second later the other is
    told to stop (SIGTERM: it drains, finishing its streams). Every request either completes or
    was cut after it had started streaming; none that had not started is lost."""
    kill_pid, term_pid = int(ARGS[0]), int(ARGS[1])
    lock = threading.Lock()
    streaming = threading.Event()
    chunks = [0]
    outcomes = []  # (completed, had_started, sent_at, detail)

    def one(i):
        had_started, sent_at = False, time.time()
        try:
            stream = client.chat.completions.create(
                model=LLM, messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                temperature=0, max_tokens=48, stream=True)
            had_started = True  # the response's status line and headers came
            finish = None
            for chunk in stream:
                if chunk.choices and chunk.choices[0].finish_reason:
                    finish = chunk.choices[0].finish_reason
                with lock:
                    chunks[0] += 1
                    if chunks[0] >= 24:
                        streaming.set()
            # A stream cut without its last event is not a completed one.
            return (finish is not None, True, sent_at, finish)
        except Exception as e:  # noqa: BLE001 - classified below
            return (False, had_started, sent_at, repr(e))

    def client_loop(k):
        for r in range(4):
            res = one(k * 4 + r)
            with lock:
                outcomes.append(res)

    threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    assert streaming.wait(120), "no stream got going"
    killed_at = time.time()
    os.kill(kill_pid, signal.SIGKILL)
    time.sleep(0.5)
    termed_at = time.time()
    os.kill(term_pid, signal.SIGTERM)
    for t in threads:
        t.join()
    lost = [o for o in outcomes if not o[0] and not o[1]]
    cut = [o for o in outcomes if not o[0] and o[1]]
    assert not lost, f"requests lost before they started: {lost}"
    # Only streams running on the killed replica when it died may be cut: at most one per
    # client, each sent before the kill.
    assert len(cut) <= 8 and all(o[2] < killed_at for o in cut), cut
    # Sent once one replica was dead and the other draining: only the third can serve them.
    after_drain = [o for o in outcomes if o[0] and o[2] > termed_at]
    assert after_drain, "nothing sent after the drain began was served"
    print(json.dumps({"requests": len(outcomes), "completed": sum(1 for o in outcomes if o[0]),
                      "cut_streams": len(cut), "lost_unstarted": len(lost),
                      "completed_after_drain": len(after_drain),
                      "kill_to_drain_s": termed_at - killed_at}))


def scenario_vlm():
    """Images in chat completions to the tiny Idefics3 (ARGS[0]: tests/fixtures/vlm)."""
    vlm = "tiny-idefics3"
    images = os.path.join(ARGS[0], "images")

    def data_url(name):
        with open(os.path.join(images, name), "rb") as f:
            return "data:image/png;base64," + base64.b64encode(f.read()).decode()

    a, b = data_url("field-96x80.png"), data_url("field-50x70.png")
    one = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": a}},
                                        {"type": "text", "text": "Describe this image."}]}]
    r = client.chat.completions.create(model=vlm, messages=one, max_tokens=8, temperature=0)
    assert r.usage.completion_tokens == 8, r.usage
    text, finish, usage, roles = chat_stream(one, model=vlm, max_tokens=8, temperature=0,
                                             stream_options={"include_usage": True})
    assert text == r.choices[0].message.content and finish == "length" and roles == 1, (text, r)
    assert usage.prompt_tokens == r.usage.prompt_tokens, usage
    two = [{"role": "user", "content": [
        {"type": "text", "text": "Compare"}, {"type": "image_url", "image_url": {"url": a}},
        {"type": "text", "text": "and"}, {"type": "image_url", "image_url": {"url": b}},
        {"type": "text", "text": "which is brighter?"}]}]
    r2 = client.chat.completions.create(model=vlm, messages=two, max_tokens=4, temperature=0)
    # Text only, to the same model.
    r3 = client.chat.completions.create(model=vlm, messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert r3.usage.completion_tokens >= 1, r3.usage

    def refused(content, model=vlm, param=None, says=""):
        status, _, body = http("POST", "/v1/chat/completions", {
            "model": model, "max_tokens": 2, "messages": [{"role": "user", "content": content}]})
        assert status == 400, (says, status, body)
        err = body["error"]
        if param:
            assert err["param"] == param, (says, err)
        assert says in err["message"], (says, err)
        return err

    look = {"type": "text", "text": "look"}
    with open(os.path.join(images, "field-96x80.png"), "rb") as f:
        png = f.read()
    truncated = "data:image/png;base64," + base64.b64encode(png[: len(png) // 2]).decode()
    not_image = "data:image/png;base64," + base64.b64encode(b"hello, world").decode()
    refused([look, {"type": "image_url", "image_url": {"url": not_image}}], says="messages[0].content[1]: not an image")
    refused([look, {"type": "image_url", "image_url": {"url": truncated}}], says="messages[0].content[1]: the image does not decode")
    refused([{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}],
            param="messages[0].content[0].image_url", says="does not fetch remote images")
    refused([look, {"type": "image_url", "image_url": {"url": a}}], model=LLM,
            param="messages[0].content[1]", says=f"model `{LLM}` reads text only")
    # Still serving.
    r4 = client.chat.completions.create(model=vlm, messages=one, max_tokens=8, temperature=0)
    assert r4.choices[0].message.content == r.choices[0].message.content
    print(json.dumps({"text": r.choices[0].message.content, "prompt_tokens": r.usage.prompt_tokens,
                      "two_prompt_tokens": r2.usage.prompt_tokens}))


globals()["scenario_" + SCENARIO]()
