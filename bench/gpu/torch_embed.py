"""PyTorch transformers on the same GPU and weights as `mlxengine bench-embed`: BERT mean
pooling + L2 normalization (what sentence-transformers does for all-MiniLM-L6-v2),
tokenization included, float32, the same sentences; sentences/s at batch 1 and 256,
median of the calls after a warm-up."""
import json, os, statistics, sys, time
import torch
from transformers import AutoModel, AutoTokenizer

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from peers import sentences  # noqa: E402

path = sys.argv[1]
dev = "cuda"
tok = AutoTokenizer.from_pretrained(path)
model = AutoModel.from_pretrained(path, torch_dtype=torch.float32).to(dev).eval()


def embed(batch):
    enc = tok(batch, padding=True, truncation=True, max_length=256, return_tensors="pt").to(dev)
    with torch.no_grad():
        h = model(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
    e = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1)
    return e.cpu()


out = []
for b in (1, 256):
    pool = sentences(max(b, 256))
    embed(pool[:b])
    calls = max(5, -(-256 // b))
    per_s = []
    for c in range(calls):
        start = (c * b) % len(pool)
        batch = (pool[start:] + pool)[:b]
        torch.cuda.synchronize(); t = time.perf_counter()
        embed(batch)
        torch.cuda.synchronize(); per_s.append(b / (time.perf_counter() - t))
    out.append({"batch": b, "calls": calls, "sentences_per_s": statistics.median(per_s)})
print("TORCH_EMBED", json.dumps({"results": out, "peak_memory_bytes": torch.cuda.max_memory_allocated()}))
