"""The vlm benchmark's Python side (bench/vlm.sh).

    python vlm_peer.py make DIR            # SmolVLM-256M-shaped random checkpoint into DIR
    python vlm_peer.py run DIR IMAGE N     # transformers on it: one JSON line

On a GPU (bench/gpu/vlm_on_device.sh): `PEER_DEVICE=cuda PEER_DTYPE=bfloat16`; the GPU
is synchronised before each clock is read.

`make`: SmolVLM-256M-Instruct's shapes (SigLIP 12 × 768 on 512-pixel frames of 16-pixel
patches, pixel shuffle × 4 → 64 tokens a frame, SmolLM2-135M's text model: 30 × 576, 9
heads / 3 KV heads, vocabulary 49280) and its processor settings (2048-pixel resize,
512-pixel tiles: a 512×512 image is 4 × 4 tiles + the whole image = 17 frames, 1088 image
tokens), random float32 weights, and the test fixture's tokenizer with SmolVLM's special
tokens and chat template. `run`: time to first token (processor + prefill, as a user
waits for it) and decode tok/s of N greedy tokens, float32 on CPU with the machine's
physical cores, the median of 3 runs after a warm-up.
"""
import json, os, shutil, statistics, sys, time

import torch
from PIL import Image
from transformers import (AutoProcessor, Idefics3Config, Idefics3ForConditionalGeneration,
                          Idefics3Processor, PreTrainedTokenizerFast)
from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "vlm", "idefics3")


def make(out):
    os.makedirs(out, exist_ok=True)
    for f in ["tokenizer.json", "chat_template.jinja"]:
        shutil.copy(os.path.join(FIXTURE, f), out)
    template = open(os.path.join(FIXTURE, "chat_template.jinja")).read()
    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(out, "tokenizer.json"), bos_token="<|im_start|>",
                                  eos_token="<end_of_utterance>", pad_token="<|endoftext|>", chat_template=template)
    proc = Idefics3Processor(image_processor=Idefics3ImageProcessorPil(
        size={"longest_edge": 2048}, max_image_size={"longest_edge": 512}, resample=1, do_image_splitting=True),
        tokenizer=tok, image_seq_len=64, chat_template=template)
    cfg = Idefics3Config(
        image_token_id=tok.convert_tokens_to_ids("<image>"), scale_factor=4, tie_word_embeddings=True,
        vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           image_size=512, patch_size=16),
        text_config=dict(model_type="llama", vocab_size=49280, hidden_size=576, intermediate_size=1536,
                         num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=100000.0,
                         tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
    torch.manual_seed(0)
    model = Idefics3ForConditionalGeneration(cfg).to(torch.float32).eval()
    model.save_pretrained(out)
    proc.save_pretrained(out)


def run(path, image, n):
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    device = os.environ.get("PEER_DEVICE", "cpu")
    dtype = getattr(torch, os.environ.get("PEER_DTYPE", "float32"))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    proc = AutoProcessor.from_pretrained(path)
    model = Idefics3ForConditionalGeneration.from_pretrained(path, dtype=dtype).to(device).eval()
    img = Image.open(image)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image."}]}]
    text = proc.apply_chat_template(messages, add_generation_prompt=True)

    def once():
        sync()
        t0 = time.perf_counter()
        inputs = proc(text=text, images=[[img]], return_tensors="pt").to(device)
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        with torch.no_grad():
            out = model(**inputs, use_cache=True)
            cache, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
            sync()
            first = time.perf_counter()
            mask = torch.cat([inputs["attention_mask"], torch.ones((1, 1), dtype=torch.long, device=device)], 1)
            t1 = time.perf_counter()
            for _ in range(n - 1):
                o = model(input_ids=nxt, past_key_values=cache, attention_mask=mask, use_cache=True)
                cache, nxt = o.past_key_values, o.logits[:, -1:].argmax(-1)
                mask = torch.cat([mask, torch.ones((1, 1), dtype=torch.long, device=device)], 1)
            sync()
            t2 = time.perf_counter()
        return (first - t0) * 1e3, (n - 1) / (t2 - t1), inputs["input_ids"].shape[1]

    once()
    runs = [once() for _ in range(3)]
    print(json.dumps({"ttft_ms": statistics.median(r[0] for r in runs),
                      "decode_tps": statistics.median(r[1] for r in runs), "prompt_tokens": runs[0][2]}))


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2])
    else:
        run(sys.argv[2], sys.argv[3], int(sys.argv[4]))
