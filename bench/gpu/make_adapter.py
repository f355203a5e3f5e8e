"""A random rank-R LoRA adapter in PEFT's layout for the q/k/v/o projections of every layer
of the model in MODEL_DIR (speed does not depend on the values; B is not zero, so the update
is computed for real). Made on the device machine with torch + safetensors."""
import json, os, sys
import torch
from safetensors.torch import save_file

model_dir, out, rank = sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 8
seed = int(sys.argv[4]) if len(sys.argv) > 4 else 0
cfg = json.load(open(os.path.join(model_dir, "config.json")))
h, heads, kv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
d = cfg.get("head_dim", h // heads)
shapes = {"q_proj": (h, heads * d), "k_proj": (h, kv * d), "v_proj": (h, kv * d), "o_proj": (heads * d, h)}
g = torch.Generator().manual_seed(seed)
t = {}
for i in range(cfg["num_hidden_layers"]):
    for name, (inp, outp) in shapes.items():
        p = f"base_model.model.model.layers.{i}.self_attn.{name}"
        t[p + ".lora_A.weight"] = (torch.randn(rank, inp, generator=g) / inp ** 0.5).to(torch.bfloat16)
        t[p + ".lora_B.weight"] = (torch.randn(outp, rank, generator=g) * 0.01).to(torch.bfloat16)
os.makedirs(out, exist_ok=True)
save_file(t, os.path.join(out, "adapter_model.safetensors"), metadata={"format": "pt"})
json.dump({"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "bias": "none",
           "target_modules": list(shapes), "task_type": "CAUSAL_LM"},
          open(os.path.join(out, "adapter_config.json"), "w"))
print("adapter ready", out)
