"""PyTorch transformers on the same GPU and weights: prefill tok/s of a 512-token prompt,
decode tok/s over 128 tokens (greedy, KV cache), median of 3 after a warm-up."""
import json, statistics, sys, time
import torch
from transformers import AutoModelForCausalLM

llm_dir = sys.argv[1]
dev = "cuda"
m = AutoModelForCausalLM.from_pretrained(llm_dir, torch_dtype=torch.bfloat16).to(dev).eval()
ids = torch.randint(3, 49000, (1, 512), device=dev)

def run():
    torch.cuda.synchronize(); t0 = time.perf_counter()
    with torch.no_grad():
        out = m(ids, use_cache=True)
    torch.cuda.synchronize(); t1 = time.perf_counter()
    past, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
    with torch.no_grad():
        for _ in range(128):
            o = m(tok, past_key_values=past, use_cache=True)
            past, tok = o.past_key_values, o.logits[:, -1:].argmax(-1)
    torch.cuda.synchronize(); t2 = time.perf_counter()
    return 512 / (t1 - t0), 128 / (t2 - t1)

run()
r = [run() for _ in range(3)]
res = {"prefill_tps": statistics.median(x[0] for x in r), "decode_tps": statistics.median(x[1] for x in r),
       "peak_memory_bytes": torch.cuda.max_memory_allocated()}
print("TORCH", json.dumps(res))
