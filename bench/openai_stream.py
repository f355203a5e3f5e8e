"""A streamed OpenAI chat completion with the standard library only (the GPU machine has
no package index): used by bench/server_load.py and bench/gpu/second_turn.py."""

import http.client
import json
import urllib.parse


def chat_stream(base, body):
    """POST `body` to BASE/v1/chat/completions; yields each server-sent event's JSON."""
    url = urllib.parse.urlparse(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=600)
    conn.request("POST", "/v1/chat/completions", json.dumps(body),
                 {"Content-Type": "application/json", "Authorization": "Bearer none"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:500]!r}")
    try:
        for line in resp:
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                break
            yield json.loads(data)
    finally:
        conn.close()
