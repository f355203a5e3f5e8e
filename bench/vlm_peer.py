"""The vlm benchmark's Python side (bench/vlm.sh).

    python vlm_peer.py make DIR            # SmolVLM-256M-shaped random checkpoint into DIR
    python vlm_peer.py run DIR IMAGE N     # transformers on it: one JSON line
    python vlm_peer.py make-qwen DIR       # Qwen2-VL-2B-shaped, bfloat16 (+ DIR-flat for mlx-vlm)
    python vlm_peer.py run-qwen DIR IMAGE N        # transformers on it
    python vlm_peer.py run-mlx-vlm DIR-flat IMAGE N  # mlx-vlm on it (MLX, its own device)

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


QWEN_FIXTURE = os.path.join(os.path.dirname(FIXTURE), "qwen2_vl")
MESSAGES = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image."}]}]


def make_qwen(out):
    """Qwen2-VL-2B-Instruct's shapes (ViT 32 × 1280, 16 heads, 14-pixel patches merged
    2×2; Qwen2-1.5B: 28 × 1536, 12 heads / 2 KV heads, vocabulary 151936, tied
    embeddings) and its processor settings (56² to 28²·1280 pixels... as the Hub's
    preprocessor_config.json: max_pixels 12845056), random bfloat16 weights, the test
    fixture's tokenizer and chat template. `out-flat`: the same weights with the config
    in the Hub's transformers 4 layout, which mlx-vlm reads."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    os.makedirs(out, exist_ok=True)
    for f in ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"]:
        shutil.copy(os.path.join(QWEN_FIXTURE, f), out)
    Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=12845056).save_pretrained(out)
    with open(os.path.join(QWEN_FIXTURE, "config.json")) as f:
        tiny = json.load(f)
    text = dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
                rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=None, eos_token_id=2,
                rope_parameters=dict(rope_type="default", rope_theta=1e6, mrope_section=[16, 24, 24]))
    cfg = Qwen2VLConfig(
        image_token_id=tiny["image_token_id"], video_token_id=tiny["video_token_id"],
        vision_start_token_id=tiny["vision_start_token_id"], vision_end_token_id=tiny["vision_end_token_id"],
        tie_word_embeddings=True, bos_token_id=None, eos_token_id=2,
        vision_config=dict(depth=32, embed_dim=1280, mlp_ratio=4, num_heads=16, hidden_size=1536,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, hidden_act="quick_gelu"),
        text_config=text)
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(cfg).to(torch.bfloat16).eval()
    model.save_pretrained(out)
    flat = out + "-flat"
    os.makedirs(flat, exist_ok=True)
    for f in os.listdir(out):
        if f != "config.json" and not os.path.exists(os.path.join(flat, f)):
            os.symlink(os.path.abspath(os.path.join(out, f)), os.path.join(flat, f))
    with open(os.path.join(out, "config.json")) as f:
        c = json.load(f)
    t = c.pop("text_config")
    rope = t.pop("rope_parameters")
    for k in ["model_type", "layer_types", "bos_token_id"]:
        t.pop(k, None)
    c.update(t)
    c["rope_theta"] = rope["rope_theta"]
    c["rope_scaling"] = {"type": "mrope", "mrope_section": rope["mrope_section"]}
    c["vision_config"].pop("rope_parameters", None)
    c["vision_config"]["model_type"] = "qwen2_vl"
    with open(os.path.join(flat, "config.json"), "w") as f:
        json.dump(c, f, indent=2)


def qwen_inputs(path, image):
    """The Qwen2-VL prompt's processor (transformers' Pillow backend), and its text."""
    from transformers import PreTrainedTokenizerFast, Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    class Proc(Qwen2VLProcessor):
        # Images only: the video processor needs torchvision.
        def check_argument_for_proper_class(self, attribute_name, arg):
            if arg is not None:
                return super().check_argument_for_proper_class(attribute_name, arg)

    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(path, "tokenizer.json"),
                                  eos_token="<|im_end|>", pad_token="<|endoftext|>")
    template = open(os.path.join(path, "chat_template.jinja")).read()
    proc = Proc(image_processor=Qwen2VLImageProcessorPil.from_pretrained(path),
                tokenizer=tok, chat_template=template)
    return proc, proc.apply_chat_template(MESSAGES, add_generation_prompt=True)


def run_qwen(path, image, n):
    from transformers import Qwen2VLForConditionalGeneration
    device = os.environ.get("PEER_DEVICE", "cpu")
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    dtype = getattr(torch, os.environ.get("PEER_DTYPE", "float32"))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    proc, text = qwen_inputs(path, image)
    model = Qwen2VLForConditionalGeneration.from_pretrained(path, dtype=dtype).to(device).eval()
    img = Image.open(image).convert("RGB")

    def once():
        sync()
        t0 = time.perf_counter()
        inputs = proc(text=text, images=[img], return_tensors="pt").to(device)
        sync()
        tp = time.perf_counter()
        with torch.no_grad():
            model.generate(**inputs, max_new_tokens=1, do_sample=False)
            sync()
            first = time.perf_counter()
            model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)
            sync()
            t2 = time.perf_counter()
        # Decode rate: n tokens' call less a one-token call (the same prefill).
        return (first - t0) * 1e3, (n - 1) / max((t2 - first) - (first - tp), 1e-9), inputs["input_ids"].shape[1]

    once()
    runs = [once() for _ in range(3)]
    print(json.dumps({"ttft_ms": statistics.median(r[0] for r in runs),
                      "decode_tps": statistics.median(r[1] for r in runs), "prompt_tokens": runs[0][2]}))


def run_mlx_vlm(path, image, n):
    """mlx-vlm's model and generation step on the flat copy; the same transformers
    processor prepares its inputs (inside the first-token clock)."""
    import mlx.core as mx
    from mlx_vlm.generate.ar import generate_step
    from mlx_vlm.utils import load_model
    proc, text = qwen_inputs(path, image)
    model = load_model(__import__("pathlib").Path(path))
    img = Image.open(image).convert("RGB")

    def once():
        t0 = time.perf_counter()
        inputs = proc(text=text, images=[img], return_tensors="np")
        ids = mx.array(inputs["input_ids"])
        px = mx.array(inputs["pixel_values"])
        grid = mx.array(inputs["image_grid_thw"])
        lm = model.language_model
        lm._position_ids, lm._rope_deltas = None, None
        steps = generate_step(ids, model, px, None, max_tokens=n, temperature=0.0, image_grid_thw=grid)
        tok, _ = next(steps)
        mx.eval(tok)
        first = time.perf_counter()
        k = 1
        for tok, _ in steps:
            k += 1
        mx.eval(tok)
        t2 = time.perf_counter()
        return (first - t0) * 1e3, (k - 1) / (t2 - first), ids.shape[1]

    once()
    runs = [once() for _ in range(3)]
    print(json.dumps({"ttft_ms": statistics.median(r[0] for r in runs),
                      "decode_tps": statistics.median(r[1] for r in runs), "prompt_tokens": runs[0][2]}))


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "make":
        make(sys.argv[2])
    elif cmd == "make-qwen":
        make_qwen(sys.argv[2])
    elif cmd == "run-qwen":
        run_qwen(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif cmd == "run-mlx-vlm":
        run_mlx_vlm(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        run(sys.argv[2], sys.argv[3], int(sys.argv[4]))
