"""Random-weight models for GPU speed runs (speed does not depend on the weights), made
on the device machine with transformers so no weights travel: a Llama of Llama-3.2-1B's
shape (with SmolLM2's 49152-token tokenizer, carried) and, when a MiniLM folder (its
config, tokenizer and sentence-transformers files, carried) is given, a BERT of
all-MiniLM-L6-v2's shape."""
import json, os, shutil, sys
import torch
from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

out, tok_dir = sys.argv[1], sys.argv[2]
minilm_dir = sys.argv[3] if len(sys.argv) > 3 else None
torch.manual_seed(0)
llm = os.path.join(out, "llama-1b-shape")
cfg = LlamaConfig(vocab_size=49152, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                  num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                  rope_theta=500000.0, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
                  torch_dtype="bfloat16")
m = LlamaForCausalLM(cfg).to(torch.bfloat16)
m.save_pretrained(llm, safe_serialization=True)
for f in os.listdir(tok_dir):
    shutil.copy(os.path.join(tok_dir, f), llm)
print("model ready", llm)
if minilm_dir:
    emb = os.path.join(out, "minilm-shape")
    shutil.copytree(minilm_dir, emb)
    cfg = BertConfig(**{k: v for k, v in json.load(open(os.path.join(minilm_dir, "config.json"))).items()
                        if not k.startswith("_") and k not in ("architectures", "transformers_version")})
    BertModel(cfg).eval().save_pretrained(emb, safe_serialization=True)
    print("model ready", emb)
