#!/usr/bin/env python3
"""Write the fuzz targets' starting seeds (small, committed): python3 fuzz/seeds/make.py.
Seeds found by fuzzing (crashes, once fixed) are committed beside these by hand."""
import json, os, struct

here = os.path.dirname(os.path.abspath(__file__))


def put(target, name, data):
    os.makedirs(os.path.join(here, target), exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(here, target, name), "wb") as f:
        f.write(data)


# --- GGUF -------------------------------------------------------------------------
def gstr(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b

T_U32, T_F32, T_STR, T_ARR, T_I32 = 4, 6, 8, 9, 5

def kv(key, ty, payload):
    return gstr(key) + struct.pack("<I", ty) + payload

def arr(ty, items):
    out = struct.pack("<IQ", ty, len(items))
    for it in items:
        out += gstr(it) if ty == T_STR else struct.pack("<i" if ty == T_I32 else "<f", it)
    return out

def gguf(kvs, tensors):
    b = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs))
    for k in kvs:
        b += k
    data, off = b"", 0
    for name, dims, payload in tensors:
        b += gstr(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        b += struct.pack("<IQ", 0, off)  # F32
        pad = payload + b"\0" * (-len(payload) % 32)
        data += pad
        off += len(pad)
    b += b"\0" * (-len(b) % 32)
    return b + data

tokens = ["<unk>", "<s>", "</s>", "a", "b", "ab", "Ġ", "Ġa"]
llama = [
    kv("general.architecture", T_STR, gstr("llama")),
    kv("general.alignment", T_U32, struct.pack("<I", 32)),
    kv("llama.context_length", T_U32, struct.pack("<I", 128)),
    kv("llama.embedding_length", T_U32, struct.pack("<I", 8)),
    kv("llama.block_count", T_U32, struct.pack("<I", 1)),
    kv("llama.feed_forward_length", T_U32, struct.pack("<I", 16)),
    kv("llama.attention.head_count", T_U32, struct.pack("<I", 2)),
    kv("llama.attention.head_count_kv", T_U32, struct.pack("<I", 1)),
    kv("llama.rope.freq_base", T_F32, struct.pack("<f", 10000.0)),
    kv("llama.attention.layer_norm_rms_epsilon", T_F32, struct.pack("<f", 1e-5)),
    kv("tokenizer.ggml.model", T_STR, gstr("gpt2")),
    kv("tokenizer.ggml.tokens", T_ARR, arr(T_STR, tokens)),
    kv("tokenizer.ggml.token_type", T_ARR, arr(T_I32, [2, 3, 3, 1, 1, 1, 1, 1])),
    kv("tokenizer.ggml.merges", T_ARR, arr(T_STR, ["a b", "Ġ a"])),
    kv("tokenizer.ggml.bos_token_id", T_U32, struct.pack("<I", 1)),
    kv("tokenizer.ggml.eos_token_id", T_U32, struct.pack("<I", 2)),
    kv("tokenizer.chat_template", T_STR, gstr("{% for m in messages %}{{ m['content'] }}{% endfor %}")),
]
emb = struct.pack("<64f", *[i / 64 for i in range(64)])
put("gguf", "llama-tiny.gguf", gguf(llama, [("token_embd.weight", [8, 8], emb), ("output_norm.weight", [8], emb[:32])]))
put("gguf", "no-tensors.gguf", gguf(llama[:3], []))
put("gguf", "truncated.gguf", gguf(llama, [("token_embd.weight", [8, 8], emb)])[:300])

# --- safetensors (config.json 0xff weights) ------------------------------------------
config = json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 8,
                     "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
                     "intermediate_size": 16, "vocab_size": 8, "max_position_embeddings": 128,
                     "torch_dtype": "float32"}).encode()
header = {"__metadata__": {"format": "pt"},
          "model.embed_tokens.weight": {"dtype": "F32", "shape": [8, 8], "data_offsets": [0, 256]},
          "model.norm.weight": {"dtype": "BF16", "shape": [8], "data_offsets": [256, 272]}}
h = json.dumps(header).encode()
st = struct.pack("<Q", len(h)) + h + b"\0" * 272
put("safetensors", "llama-tiny", config + b"\xff" + st)
put("safetensors", "quantized", json.dumps({"model_type": "qwen2", "hidden_size": 64, "num_hidden_layers": 2,
    "num_attention_heads": 4, "quantization": {"group_size": 64, "bits": 4}}).encode() + b"\xff" + st)

# --- tokenizer.json -----------------------------------------------------------------------
vocab = {t: i for i, t in enumerate(tokens)}
put("tokenizer", "wordlevel.json", json.dumps({"version": "1.0", "added_tokens": [],
    "normalizer": {"type": "Lowercase"}, "pre_tokenizer": {"type": "Whitespace"},
    "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}}))
put("tokenizer", "bpe-bytelevel.json", json.dumps({"version": "1.0",
    "added_tokens": [{"id": 1, "content": "<s>", "single_word": False, "lstrip": False, "rstrip": False,
                      "normalized": False, "special": True}],
    "normalizer": None, "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
    "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                       "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                       "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
    "decoder": {"type": "ByteLevel"},
    "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
              "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
              "vocab": vocab, "merges": ["a b", "Ġ a"]}}))
put("tokenizer", "wordpiece-bert.json", json.dumps({"version": "1.0", "added_tokens": [],
    "normalizer": {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True, "strip_accents": None, "lowercase": True},
    "pre_tokenizer": {"type": "BertPreTokenizer"},
    "post_processor": {"type": "BertProcessing", "sep": ["[SEP]", 3], "cls": ["[CLS]", 2]},
    "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##", "max_input_chars_per_word": 100,
              "vocab": {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "hello": 4, "world": 5, "##s": 6}}}))

# --- chat templates (template 0xff messages, one per line) ---------------------------------
msgs = "You are terse.\nHello there\nHi! How can I help?\nWhat is 2+2?"
chatml = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\nYou are a helpful AI assistant<|im_end|>\n' }}{% endif %}"
          "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
put("template", "chatml", chatml.encode() + b"\xff" + msgs.encode())
gemma = ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set first = messages[0]['content'] + '\n\n' %}"
         "{% set loop_messages = messages[1:] %}{% else %}{% set first = '' %}{% set loop_messages = messages %}{% endif %}"
         "{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
         "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
         "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
         "{{ '<start_of_turn>' + role + '\n' + (first if loop.first else '') + message['content'] | trim + '<end_of_turn>\n' }}"
         "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}")
put("template", "gemma", gemma.encode() + b"\xff" + msgs.encode())
llama3 = ("{{- bos_token }}{%- set date_string = strftime_now('%d %b %Y') %}"
          "{%- for message in messages %}{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'].strip() + '<|eot_id|>' }}"
          "{%- endfor %}{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}")
put("template", "llama3", llama3.encode() + b"\xff" + msgs.encode())
put("template", "loops", b"{% for i in range(100) %}{% for j in range(100) %}{{ i * j }}{% endfor %}{% endfor %}"
    b"{{ messages|length }}{{ 'ab' * 3 }}{{ messages[0].content|upper|replace('A','b') }}\xffx\ny")

# --- registry.toml ------------------------------------------------------------------------------
put("registry", "models.toml", """
[[models]]
id = "smollm2-135m-instruct"
kind = "llm"
source = { hub = "bartowski/SmolLM2-135M-Instruct-GGUF", file = "SmolLM2-135M-Instruct-Q4_1.gguf", revision = "main" }
context_length = 8192
features = ["streaming", "batching"]
default = true

[[models]]
id = "local-embed"
kind = "embed"
source = { path = "models/all-minilm-l6-v2" }
dtype = "float32"
""")

# --- OpenAI bodies (first byte: 0 chat, 1 completions, 2 embeddings) ------------------------------------
put("openai", "chat", b"\x00" + json.dumps({"model": "m", "messages": [{"role": "system", "content": "Be brief."},
    {"role": "user", "content": [{"type": "text", "text": "Hi"}]}], "max_tokens": 8, "temperature": 0.7, "top_p": 0.9,
    "n": 2, "stop": ["\n\n"], "stream": True, "stream_options": {"include_usage": True}, "seed": 7, "logprobs": True}).encode())
put("openai", "chat-image", b"\x04" + json.dumps({"messages": [{"role": "user", "content": [{"type": "text", "text": "What?"},
    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}]}).encode())
put("openai", "completion", b"\x01" + json.dumps({"model": "m", "prompt": ["Once", "upon"], "max_tokens": 4,
    "frequency_penalty": 0.5, "logprobs": 1, "n": 3}).encode())
put("openai", "embedding", b"\x02" + json.dumps({"model": "e", "input": ["a", "b c"], "encoding_format": "base64"}).encode())
