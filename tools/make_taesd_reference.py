#!/usr/bin/env python3
"""Build the tiny TAESD test decoder and the diffusers reference outputs it is checked against.

What this makes (committed to the repository, regenerate only by hand):

* ``assets/models/tiny-taesd`` -- a tiny random-weight diffusers ``AutoencoderTiny`` folder
  (``config.json`` + ``diffusion_pytorch_model.safetensors`` at the root, the layout of the
  hub repos madebyollin/taesd and madebyollin/taesdxl). Same block structure as the real
  TAESD (decoder stages of 3, 3, 3, 1 blocks, 2x nearest upsampling between stages, so one
  latent cell is 8x8 pixels), with 16 decoder / 8 encoder channels instead of 64.
* ``assets/reference/tiny-taesd.safetensors`` + ``tiny-taesd.json`` --
  ``latents`` [2,4,8,8] (UNet-space latents, as the pipeline holds them) and ``decoded``,
  what ``AutoencoderTiny.decode(latents / scaling_factor)`` returns (the call
  ``StableDiffusionPipeline`` makes); ``latents_small`` [1,4,4,6] decoded with the same
  weights under other configs (``decoded_silu``, ``decoded_gelu``, ``decoded_mish``: act_fn
  overridden; ``decoded_scaling_0.5``: scaling_factor 0.5); and ``image_ddim_u8``: the
  tiny-sd15 ``StableDiffusionPipeline`` (DDIM, 8 steps, guidance 7.5, the committed
  ``latents_2x4x8x8``) with ``vae=`` this AutoencoderTiny, as uint8 [2,64,64,3].

Needs ``assets/models/tiny-sd15`` and ``assets/reference/latents_2x4x8x8.safetensors``
(from make_reference.py). Run from the repository root (never in CI; CPU, seconds):

    .venv/bin/python tools/make_taesd_reference.py
"""

import json
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import numpy as np
import torch
from safetensors.torch import load_file, save_file

import diffusers
from diffusers import AutoencoderTiny, DDIMScheduler, StableDiffusionPipeline

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "assets" / "models" / "tiny-taesd"
REF = ROOT / "assets" / "reference"

PROMPT = "a brown puppy on the beach"
NEGATIVE = "blurry, low quality"
STEPS = 8
GUIDANCE = 7.5
LATENT_SEED = 4321

VERSIONS = {
    "torch": torch.__version__,
    "diffusers": diffusers.__version__,
    "python": sys.version.split()[0],
}


def build():
    torch.manual_seed(3)
    return AutoencoderTiny(
        encoder_block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(16, 16, 16, 16),
        act_fn="relu",
        latent_channels=4,
        upsampling_scaling_factor=2,
        num_encoder_blocks=(1, 3, 3, 3),
        num_decoder_blocks=(3, 3, 3, 1),
        scaling_factor=1.0,
    ).eval()


def stats(name, x):
    """Stats of a decoder output mapped to [0, 1] as the pipeline does."""
    x = (x.float() / 2 + 0.5).clamp(0, 1)
    s = dict(
        min=float(x.min()), max=float(x.max()), mean=float(x.mean()), std=float(x.std()),
        frac_clamped=float(((x <= 1e-6) | (x >= 1 - 1e-6)).float().mean()),
    )
    print(f"  {name:22s} min={s['min']:.4f} max={s['max']:.4f} mean={s['mean']:.4f} "
          f"std={s['std']:.4f} clamped={s['frac_clamped']:.3f}")
    return s


def check_not_degenerate(name, x):
    s = stats(name, x)
    if not (s["max"] - s["min"] > 0.4 and s["std"] > 0.04 and s["frac_clamped"] < 0.25):
        raise SystemExit(f"degenerate output {name}: {s}")
    return s


def decode(vae, latents):
    """What StableDiffusionPipeline does before and in vae.decode."""
    return vae.decode(latents / vae.config.scaling_factor).sample


def fix_init(vae, latents):
    """Default init makes the decoder's output almost constant and far below 0 (biases
    dominate, each conv shrinks the signal). Rescale the last conv, per output channel, so
    that on `latents` each colour channel has mean 0 and std 0.5 in [-1, 1] units; every other
    weight keeps its default init. Recorded in the json.

    `latents`: the reference latents and the tiny-sd15 pipeline's final latents, so that both
    decode to images with spread, unsaturated pixels."""
    with torch.no_grad():
        x = decode(vae, latents)
        mean, std = x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3))
        a = 0.5 / std
        # out = 2 * conv - 1; want a * (out - mean) = 2 * (a * conv + c) - 1.
        last = vae.decoder.layers[-1]
        last.weight.mul_(a[:, None, None, None])
        last.bias.copy_(a * last.bias + (1 - a * (1 + mean)) / 2)
    return ["decoder.layers[-1] (last conv) rescaled per channel: output mean 0, std 0.5 on cat(latents, the tiny-sd15 DDIM pipeline's final latents)"]


def run_pipeline(pipe, output_type):
    latents = load_file(REF / "latents_2x4x8x8.safetensors")["latents"]
    with torch.no_grad():
        return pipe(
            PROMPT, negative_prompt=NEGATIVE, latents=latents, num_inference_steps=STEPS,
            guidance_scale=GUIDANCE, height=64, width=64, num_images_per_prompt=2,
            output_type=output_type,
        ).images


def main():
    if OUT.exists():
        shutil.rmtree(OUT)
    gen = torch.Generator().manual_seed(LATENT_SEED)
    t = {}
    meta = {"image_stats": {}}
    # UNet-space latents have std ~1; 1.5 also exercises the decoder's tanh clamp.
    t["latents"] = torch.randn([2, 4, 8, 8], generator=gen) * 1.5
    pipe = StableDiffusionPipeline.from_pretrained(
        ROOT / "assets" / "models" / "tiny-sd15", safety_checker=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe_latents = run_pipeline(pipe, "latent")
    vae = build()
    fixes = fix_init(vae, torch.cat([t["latents"], pipe_latents]))
    vae.save_pretrained(OUT, safe_serialization=True)
    vae = AutoencoderTiny.from_pretrained(OUT).eval()
    assert next(vae.parameters()).dtype == torch.float32

    with torch.no_grad():
        t["decoded"] = decode(vae, t["latents"])
        meta["image_stats"]["decoded"] = check_not_degenerate("decoded", t["decoded"])
        t["latents_small"] = torch.randn([1, 4, 4, 6], generator=gen) * 1.5
        state = load_file(OUT / "diffusion_pytorch_model.safetensors")
        variants = {
            "decoded_silu": dict(act_fn="silu"),
            "decoded_gelu": dict(act_fn="gelu"),
            "decoded_mish": dict(act_fn="mish"),
            "decoded_scaling_0.5": dict(scaling_factor=0.5),
        }
        for key, override in variants.items():
            other = AutoencoderTiny.from_config({**vae.config, **override}).eval()
            other.load_state_dict(state)
            t[key] = decode(other, t["latents_small"])
            meta["image_stats"][key] = stats(key, t[key])
        meta["variants"] = variants

        # The whole pipeline, with the tiny SD 1.5 model and this decoder as its vae.
        pipe.vae = vae
        img = torch.from_numpy(np.ascontiguousarray(run_pipeline(pipe, "np"))).float()
        t["image_ddim_u8"] = (img * 255).round().to(torch.uint8)
        meta["image_stats"]["image_ddim"] = check_not_degenerate("image_ddim", img * 2 - 1)

    t = {k: v.contiguous() for k, v in t.items()}
    save_file(t, REF / "tiny-taesd.safetensors")
    meta = {
        "model": "assets/models/tiny-taesd",
        "versions": VERSIONS,
        "weight_init": "AutoencoderTiny default init under torch.manual_seed(3)",
        "weight_init_fixes": fixes,
        "latents": f"torch.randn([2,4,8,8], generator=Generator().manual_seed({LATENT_SEED})) * 1.5, then latents_small [1,4,4,6] * 1.5 from the same generator",
        "decode_call": "vae.decode(latents / vae.config.scaling_factor).sample (as StableDiffusionPipeline)",
        "pipeline_call": f"StableDiffusionPipeline.from_pretrained(tiny-sd15, vae=tiny-taesd), DDIMScheduler.from_config; pipe(prompt, negative_prompt=..., latents=latents_2x4x8x8, num_inference_steps={STEPS}, guidance_scale={GUIDANCE}, height=64, width=64, num_images_per_prompt=2, output_type='np')",
        "prompt": PROMPT,
        "negative_prompt": NEGATIVE,
        "u8_rule": "(image*255).round() as uint8",
        "tensors": {k: {"dtype": str(v.dtype).replace("torch.", ""), "shape": list(v.shape)} for k, v in t.items()},
        **meta,
    }
    (REF / "tiny-taesd.json").write_text(json.dumps(meta, indent=2) + "\n")
    size = sum(p.stat().st_size for p in OUT.iterdir()) + (REF / "tiny-taesd.safetensors").stat().st_size
    print(f"wrote {OUT} and {REF / 'tiny-taesd.safetensors'} ({size / 1024:.0f} KiB in all)")


if __name__ == "__main__":
    main()
