#!/usr/bin/env python3
"""Turn the rows of bench/run_all.sh into bench/results/cpu.{json,md,png} and the
generated section of BENCHMARKS.md.

usage: report.py ROWS.jsonl OUT_DIR MACHINE RUNS
"""
import json, os, re, sys

rows_path, out, machine, runs = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
rows = [json.loads(l) for l in open(rows_path) if l.strip()]
json.dump({"machine": machine, "runs": int(runs), "rows": rows}, open(os.path.join(out, "cpu.json"), "w"), indent=1)


def med(d, k):
    v = d.get(k)
    return v["median"] if isinstance(v, dict) else v


def mb(b):
    return f"{b / 2**20:.0f} MB" if b else "-"


md = [f"Machine: {machine}. `bench/run_all.sh {runs}`: medians of {runs} runs after a warm-up "
      "(ratios: ours / peer; above 1 is faster for speeds, lower for TTFT).", ""]
md += ["### LLM (SmolLM2-135M-Instruct, 128 new tokens, greedy)", "",
       "| setup | tool | prompt tok | TTFT ms | prefill tok/s | decode tok/s | peak mem |",
       "|---|---|---:|---:|---:|---:|---:|"]
chart = []
for r in rows:
    if r["group"] != "llm":
        continue
    o, p = r["ours"], r["peer"]
    for name, d in (("MLXEngine", o), (r["peer_name"], p)):
        md.append(f"| {r['what']} | {name} | {d['prompt_tokens']} | {med(d, 'ttft_ms'):.1f} | "
                  f"{med(d, 'prefill_tps'):.1f} | {med(d, 'decode_tps'):.1f} | {mb(med(d, 'peak_memory_bytes'))} |")
    rt = med(o, "ttft_ms") / med(p, "ttft_ms")
    rp = med(o, "prefill_tps") / med(p, "prefill_tps")
    rd = med(o, "decode_tps") / med(p, "decode_tps")
    md.append(f"| {r['what']} | **ratio** | | **{rt:.2f}** | **{rp:.2f}** | **{rd:.2f}** | |")
    chart.append((r["what"], rp, rd))
for r in rows:
    if r["group"] == "embed":
        md += ["", "### Embeddings (all-MiniLM-L6-v2, short sentences)", "",
               "| batch | MLXEngine sentences/s | " + r["peer_name"] + " | ratio |", "|---:|---:|---:|---:|"]
        for a, b in zip(r["ours"]["results"], r["peer"]["results"]):
            x, y = med(a, "sentences_per_s"), med(b, "sentences_per_s")
            md.append(f"| {a['batch']} | {x:.1f} | {y:.1f} | **{x / y:.2f}** |")
            chart.append((f"embed b{a['batch']}", x / y, None))
        md.append(f"| peak memory | {mb(r['ours']['peak_rss_bytes'])} | {mb(r['peer']['peak_rss_bytes'])} | |")
    if r["group"] == "abi":
        o = r["ours"]
        md += ["", "### ABI overhead", "",
               f"On `{o['model']}` ({o['plugin']}), one decoded token takes {o['per_token_ns'] / 1e3:.0f} µs.", "",
               "| path | ns per call | share of a token |", "|---|---:|---:|",
               f"| plugin call round trip (`Model::info`) | {o['round_trip_ns']:.0f} | {o['round_trip_pct_of_token']:.4f}% |",
               f"| streamed token callback (`TokenSink`) | {o['token_callback_ns']:.0f} | {o['token_callback_pct_of_token']:.4f}% |"]
    if r["group"] == "server":
        md += ["", "### Server (`bench/server.sh 64 2`)", "", "```", r["text"].strip(), "```"]
open(os.path.join(out, "cpu.md"), "w").write("\n".join(md) + "\n")

try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = [c[0] for c in chart]
    fig, ax = plt.subplots(figsize=(max(8, len(labels) * 0.9), 4.5))
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], [c[1] for c in chart], 0.4, label="prefill / throughput ratio")
    ax.bar([x + 0.2 for x in xs], [c[2] or 0 for c in chart], 0.4, label="decode ratio")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(list(xs))
    ax.set_xticklabels(labels, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("MLXEngine / peer (higher is faster)")
    ax.set_title(f"MLXEngine vs peers on CPU — {machine}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "cpu.png"), dpi=110)
except ImportError:
    print("matplotlib missing: no chart", file=sys.stderr)

bm = "BENCHMARKS.md"
text = open(bm).read()
begin, end = "<!-- cpu-table:begin (bench/run_all.sh) -->", "<!-- cpu-table:end -->"
block = begin + "\n\n![MLXEngine / peer ratios](bench/results/cpu.png)\n\n" + "\n".join(md) + "\n\n" + end
if begin in text:
    text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
else:
    text = text.rstrip() + "\n\n## CPU: the whole comparison (generated)\n\n" + block + "\n"
open(bm, "w").write(text)
