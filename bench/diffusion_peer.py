#!/usr/bin/env python3
"""Random-weight Stable Diffusion pipelines of the real shapes, and diffusers timing them.

  diffusion_peer.py make sd15|sdxl DIR    # a diffusers folder (float16 files)
  diffusion_peer.py run DIR WxH STEPS [RUNS]
        # diffusers on PEER_DEVICE (cpu | cuda, default cuda if present) in PEER_DTYPE
        # (float32 | float16, default float16 on cuda): a 2-step warm-up, then RUNS runs of
        # STEPS Euler steps with guidance 7.5; prints JSON: seconds per step (median of the
        # steady steps, each run's median), per image, peak memory.

`sd15` is SD 1.5's shapes (CLIP-L text encoder, the 860M UNet, the VAE), `sdxl` SDXL
base's (CLIP-L + OpenCLIP bigG with projection, the 2.6B UNet with transformer depths
1/2/10 and `text_time`, the VAE at scaling 0.13025). The tokenizer is the tiny CLIP BPE
of the parity fixtures (the prompt's ids are all the text encoders need; the vocabulary
size is the real 49408). Weights are random: speed and memory only.
"""

import json
import os
import shutil
import statistics
import sys
import time

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)

HERE = os.path.dirname(os.path.abspath(__file__))
TOK = os.path.join(HERE, "..", "tests", "fixtures", "diffusion", "sd15", "tokenizer")
PROMPT = "a photograph of an astronaut riding a horse on the moon"
NEGATIVE = "blurry, low quality"


def text(hidden, layers, heads, act, projection=False):
    cfg = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=hidden * 4,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=77,
        hidden_act=act,
        projection_dim=hidden,
        bos_token_id=632,
        eos_token_id=633,
        pad_token_id=633,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg)


def vae(scaling):
    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
        scaling_factor=scaling,
    )


def scheduler():
    return EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    )


def tokenizer(pad):
    return CLIPTokenizer(
        os.path.join(TOK, "vocab.json"),
        os.path.join(TOK, "merges.txt"),
        model_max_length=77,
        pad_token=pad,
    )


def ship_tokenizer(out, folder, pad):
    d = os.path.join(out, folder)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    for f in ("vocab.json", "merges.txt"):
        shutil.copy(os.path.join(TOK, f), d)
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                   "pad_token": pad, "unk_token": "<|endoftext|>", "model_max_length": 77}, f)


def make(kind, out):
    torch.manual_seed(0)
    if kind == "sd15":
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
        pipe = StableDiffusionPipeline(
            vae=vae(0.18215), text_encoder=text(768, 12, 12, "quick_gelu"),
            tokenizer=tokenizer("<|endoftext|>"), unet=unet, scheduler=scheduler(),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
    else:
        unet = UNet2DConditionModel(
            sample_size=128,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(320, 640, 1280),
            transformer_layers_per_block=(1, 2, 10),
            attention_head_dim=(5, 10, 20),
            cross_attention_dim=2048,
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
        )
        pipe = StableDiffusionXLPipeline(
            vae=vae(0.13025), text_encoder=text(768, 12, 12, "quick_gelu"),
            text_encoder_2=text(1280, 32, 20, "gelu", projection=True),
            tokenizer=tokenizer("<|endoftext|>"), tokenizer_2=tokenizer("!"),
            unet=unet, scheduler=scheduler(),
        )
    pipe.to(torch.float16)
    pipe.save_pretrained(out, safe_serialization=True)
    ship_tokenizer(out, "tokenizer", "<|endoftext|>")
    if kind == "sdxl":
        ship_tokenizer(out, "tokenizer_2", "!")
    print(out, file=sys.stderr)


def run(folder, size, steps, runs):
    w, h = (int(v) for v in size.split("x"))
    cuda = torch.cuda.is_available()
    device = os.environ.get("PEER_DEVICE", "cuda" if cuda else "cpu")
    dtype = getattr(torch, os.environ.get("PEER_DTYPE", "float16" if device == "cuda" else "float32"))
    index = json.load(open(os.path.join(folder, "model_index.json")))
    cls = StableDiffusionXLPipeline if index["_class_name"] == "StableDiffusionXLPipeline" else StableDiffusionPipeline
    kw = {} if cls is StableDiffusionXLPipeline else {"safety_checker": None, "requires_safety_checker": False}
    pipe = cls.from_pretrained(folder, torch_dtype=dtype, **kw).to(device)
    pipe.set_progress_bar_config(disable=True)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def once(n):
        marks = []

        def on_step(p, i, t, kwargs):
            sync()
            marks.append(time.perf_counter())
            return kwargs

        sync()
        start = time.perf_counter()
        pipe(PROMPT, negative_prompt=NEGATIVE, width=w, height=h, num_inference_steps=n,
             guidance_scale=7.5, generator=torch.Generator(device).manual_seed(1),
             output_type="np", callback_on_step_end=on_step)
        sync()
        total = time.perf_counter() - start
        per = [b - a for a, b in zip([start] + marks, marks)]
        steady = statistics.median(per[1:] if len(per) > 1 else per)
        return steady, total, total - steady * len(per)

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    once(2)
    warm = time.perf_counter() - t
    res = [once(steps) for _ in range(runs)]
    med = lambda xs: {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}
    out = {
        "peer": f"diffusers {__import__('diffusers').__version__} torch {torch.__version__}",
        "device": device, "dtype": str(dtype).replace("torch.", ""), "size": size,
        "steps": steps, "runs": runs, "warm_up_s": warm,
        "step_s": med([r[0] for r in res]), "image_s": med([r[1] for r in res]),
        "other_s": med([r[2] for r in res]),
    }
    if device == "cuda":
        out["peak_cuda_bytes"] = torch.cuda.max_memory_allocated()
    else:
        import resource
        out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(out))


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "run":
        run(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]) if len(sys.argv) > 5 else 3)
    else:
        sys.exit(__doc__)
