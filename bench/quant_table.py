"""What each quantization setting costs, in one run (bench/quant_table.sh sets it up).

For each model (SmolLM2-135M, Gemma 3 270M; "float" = the shipped GGUF's values at
float32): size on disk, perplexity on the committed evaluation text (`mlxengine
perplexity`, llama-perplexity's method) and its change against float32, decode tokens/s
(`mlxengine bench`). Rows: float32 and bfloat16 on MLX; MLX affine 8/6/4/3 bits at groups
32/64/128 (`mlxengine quantize`) on MLX; GGUF F32 twin and Q8_0/Q6_K/Q5_K_M/Q4_K_M/Q4_0
(`mlxengine quantize --type`, llama.cpp's quantizer) on the ggml provider, with
`llama-perplexity` (llama.cpp's own tool) on the same file beside ours.

  python3 bench/quant_table.py MLXENGINE LLAMA_PERPLEXITY WORK TEXT CTX MAX_TOKENS THREADS [CHUNKS]
"""

import json
import os
import re
import subprocess
import sys

ENGINE, LLAMA_PPL, WORK, TEXT, CTX, N, THREADS = sys.argv[1:8]
CHUNKS = sys.argv[8] if len(sys.argv) > 8 else "0"  # 0: the whole text
CACHE = os.environ.get("MLXENGINE_CACHE", os.path.expanduser("~/.cache/mlxengine"))
MODELS = [
    ("SmolLM2-135M", "smollm2-135m-instruct", "llama", True),
    ("Gemma 3 270M", "gemma3-270m", "gemma3", False),
]
MLX = [(b, g) for b in (8, 6, 4, 3) for g in (32, 64, 128)]
GGUF = ["Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0"]
REGISTRY = os.path.join(WORK, "quant-table.toml")


def run(args):
    r = subprocess.run(args, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {r.stderr.strip()[-400:]}")
    return r.stdout


def me(*args):
    return run([ENGINE, "--registry", REGISTRY, *args])


def size(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(
        os.path.getsize(os.path.join(d, f))
        for d, _, fs in os.walk(path)
        for f in fs
        if f.endswith((".safetensors", ".gguf"))
    )


def gguf_of(dir_):
    return next(os.path.join(dir_, f) for f in os.listdir(dir_) if f.endswith(".gguf"))


def make(model_id, arch, ragged):
    """The checkpoints of one model (made once into WORK) and its registry rows."""
    src = gguf_of(os.path.join(CACHE, "models", model_id))
    rows = [("float32", "mlx", src, {"dtype": "float32"}), ("bfloat16", "mlx", src, {"dtype": "bfloat16"})]
    for b, g in MLX:
        dst = os.path.join(WORK, f"{model_id}-mlx-{b}bit-g{g}")
        extra = ["--allow-float"] if ragged and g == 128 else []
        if not os.path.isdir(dst):
            run([ENGINE, "quantize", src, "-o", dst, "--bits", str(b), "--group-size", str(g), "-q", *extra])
        note = " (layers of 576 inputs kept in float)" if extra else ""
        rows.append((f"MLX {b}-bit g{g}{note}", "mlx", dst, {}))
    dst = os.path.join(WORK, f"{model_id}-mlx-mxfp4")
    if not os.path.isdir(dst):
        run([ENGINE, "quantize", src, "-o", dst, "--mode", "mxfp4", "-q"])
    rows.append(("MLX mxfp4", "mlx", dst, {}))
    twin = os.path.join(WORK, f"{model_id}-F32.gguf")
    if not os.path.isfile(twin):
        run([ENGINE, "quantize", src, "-o", twin, "--type", "F32", "-q"])
    rows.append(("GGUF F32", "ggml", twin, {}))
    for t in GGUF:
        dst = os.path.join(WORK, f"{model_id}-{t}.gguf")
        if not os.path.isfile(dst):
            run([ENGINE, "quantize", src, "-o", dst, "--type", t, "-q"])
        rows.append((f"GGUF {t}", "ggml", dst, {}))
    return [(name, backend, path, extra, f"{model_id}--{i}", arch) for i, (name, backend, path, extra) in enumerate(rows)]


def llama_ppl(path):
    chunks = ["--chunks", CHUNKS] if CHUNKS != "0" else []
    r = subprocess.run([LLAMA_PPL, "-m", path, "-f", TEXT, "-c", CTX, "-t", THREADS, "-b", CTX, *chunks],
                       capture_output=True, text=True)
    m = re.search(r"Final estimate: PPL = ([0-9.]+)", r.stdout + r.stderr)
    if not m:
        raise RuntimeError(f"llama-perplexity on {path}: {(r.stdout + r.stderr)[-400:]}")
    return float(m.group(1))


def main():
    os.makedirs(WORK, exist_ok=True)
    tables = []
    for title, model_id, arch, ragged in MODELS:
        tables.append((title, make(model_id, arch, ragged)))
    with open(REGISTRY, "w") as f:
        for _, rows in tables:
            for name, backend, path, extra, rid, arch in rows:
                f.write(f'[[models]]\nid = "{rid}"\nkind = "llm"\narchitecture = "{arch}"\n')
                f.write(f'backend = "{"mlx-llm" if backend == "mlx" else "ggml-llm"}"\n')
                for k, v in extra.items():
                    f.write(f'{k} = "{v}"\n')
                f.write(f'source = {{ path = "{path}" }}\n\n')
    what = "the whole text" if CHUNKS == "0" else f"first {CHUNKS} chunks"
    print(f"text: {os.path.basename(TEXT)}, ctx {CTX} ({what}), decode: {N} tokens, {THREADS} threads\n")
    for title, rows in tables:
        print(f"### {title}\n")
        print("| weights | provider | size | perplexity | Δ vs float32 | llama-perplexity | decode tok/s |")
        print("|---|---|---:|---:|---:|---:|---:|")
        base = None
        f32_decode = None
        # Float rows are the source's values held at that dtype: their size is the F32
        # twin's (float32) or half of it (bfloat16).
        f32_bytes = size(next(r[2] for r in rows if r[0] == "GGUF F32"))
        for name, backend, path, _, rid, _ in rows:
            chunks = ["--chunks", CHUNKS] if CHUNKS != "0" else []
            p = json.loads(me("perplexity", "-m", rid, "-f", TEXT, "--ctx", CTX, "--json", *chunks))["ppl"]
            base = base or p
            theirs = f"{llama_ppl(path):.3f}" if backend == "ggml" else ""
            # On a CPU the MLX provider dequantizes affine checkpoints at load: they decode
            # as float32 does, so only float32, bfloat16 and one 4-bit row are timed.
            timed = backend == "ggml" or name in ("float32", "bfloat16", "MLX 4-bit g64")
            if timed:
                b = json.loads(me("bench", "--model", rid, "--max-tokens", N, "--runs", "3", "--json"))
                tps = b["decode_tps"]["median"]
                f32_decode = f32_decode or tps
                decode = f"{tps:.1f}"
            else:
                decode = "as float32"
            nbytes = {"float32": f32_bytes, "bfloat16": f32_bytes / 2}.get(name) or size(path)
            print(
                f"| {name} | {backend} | {nbytes / 1e6:.0f} MB | {p:.3f} | {100 * (p / base - 1):+.1f} % | {theirs} | {decode} |",
                flush=True,
            )
        print()


main()
