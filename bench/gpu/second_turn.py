"""A chat's second turn against an OpenAI server: the first turn sends a ~2,000-token
conversation, the second the same history, the first turn's answer and a new question.
Prints both times to first token (median of 3 conversations, each new from its first
word so no run reuses another's) and their ratio: what a prompt cache saves.

    second_turn.py URL MODEL
"""

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from openai_stream import chat_stream  # noqa: E402

base, model = sys.argv[1], sys.argv[2]
PARA = ("The harbour master logs every ship that enters: its name, flag, tonnage, cargo and "
        "the hour the pilot boarded. In storms the log grows short and the hand unsteady. ")


def turn(messages):
    t0 = time.perf_counter()
    ttft, text = None, []
    body = {"model": model, "messages": messages, "max_tokens": 32, "temperature": 0,
            "stream": True}
    for chunk in chat_stream(base, body):
        delta = ((chunk.get("choices") or [{}])[0].get("delta") or {}).get("content")
        if delta:
            ttft = ttft or time.perf_counter() - t0
            text.append(delta)
    return ttft or time.perf_counter() - t0, "".join(text)


firsts, seconds = [], []
for k in range(3):
    history = [{"role": "user", "content": f"Conversation {k} {time.time()}. " + PARA * 60}]
    t1, answer = turn(history)
    history += [{"role": "assistant", "content": answer},
                {"role": "user", "content": "Summarise that in one line."}]
    t2, _ = turn(history)
    firsts.append(t1)
    seconds.append(t2)
a, b = statistics.median(firsts), statistics.median(seconds)
print(f"SECOND_TURN first {a * 1e3:.1f} ms, second {b * 1e3:.1f} ms, ratio {b / a:.2f}")
