#!/usr/bin/env python3
"""Write a full-size Stable Diffusion diffusers folder with seeded random weights.

Why: ``imagine bench --model DIR`` and ``tools/bench_compare.py --model DIR`` must time
the same architecture and the same weights on both sides, and real checkpoints are
gigabytes that need a network.  This builds the real architecture of
``stabilityai/sd-turbo`` (SD 2.1: CLIP ViT-H text encoder truncated to 23 layers,
linear-projection UNet with per-block head dims, 4-channel VAE) or SD 1.5 from their
hub config.json contents, with PyTorch/diffusers default init under
``torch.manual_seed(seed)``, and saves it with ``save_pretrained`` (fp32 safetensors).

The tokenizer is copied from ``assets/models/tiny-sd2-v/tokenizer`` (the genuine CLIP
BPE cut to 1000 merges): every prompt is framed to 77 tokens, so the work timed is the
same as with the full vocabulary.

Random weights make subnormal floats on CPU; benchmarks must set flush-to-zero on both
sides (``imagine bench`` and ``bench_compare.py`` both do).

Run by hand, never in CI (about 2 minutes and 5 GB of disk for sd-turbo):
    .venv/bin/python tools/make_random_model.py --arch sd-turbo --out /tmp/sd-turbo-random
"""

import argparse
import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

REPO = Path(__file__).resolve().parent.parent

UNET_COMMON = {
    "act_fn": "silu",
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "only_cross_attention": False,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": [
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ],
}

ARCHS = {
    # stabilityai/sd-turbo (SD 2.1 base architecture, 512 px).
    "sd-turbo": {
        "unet": {
            **UNET_COMMON,
            "attention_head_dim": [5, 10, 20, 20],
            "cross_attention_dim": 1024,
            "use_linear_projection": True,
        },
        "text": {
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_attention_heads": 16,
            "num_hidden_layers": 23,
            "hidden_act": "gelu",
            "projection_dim": 512,
            "max_position_embeddings": 77,
            "vocab_size": 49408,
            "layer_norm_eps": 1e-05,
            "bos_token_id": 0,
            "eos_token_id": 2,
            "pad_token_id": 1,
        },
        "scheduler": {
            "_class_name": "EulerDiscreteScheduler",
            "beta_end": 0.012,
            "beta_schedule": "scaled_linear",
            "beta_start": 0.00085,
            "interpolation_type": "linear",
            "num_train_timesteps": 1000,
            "prediction_type": "epsilon",
            "sample_max_value": 1.0,
            "set_alpha_to_one": False,
            "skip_prk_steps": True,
            "steps_offset": 1,
            "timestep_spacing": "trailing",
            "trained_betas": None,
            "use_karras_sigmas": False,
        },
    },
    # runwayml/stable-diffusion-v1-5.
    "sd15": {
        "unet": {
            **UNET_COMMON,
            "attention_head_dim": 8,
            "cross_attention_dim": 768,
            "use_linear_projection": False,
        },
        "text": {
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_attention_heads": 12,
            "num_hidden_layers": 12,
            "hidden_act": "quick_gelu",
            "projection_dim": 768,
            "max_position_embeddings": 77,
            "vocab_size": 49408,
            "layer_norm_eps": 1e-05,
            "bos_token_id": 0,
            "eos_token_id": 2,
            "pad_token_id": 1,
        },
        "scheduler": {
            "_class_name": "PNDMScheduler",
            "beta_end": 0.012,
            "beta_schedule": "scaled_linear",
            "beta_start": 0.00085,
            "num_train_timesteps": 1000,
            "set_alpha_to_one": False,
            "skip_prk_steps": True,
            "steps_offset": 1,
            "trained_betas": None,
        },
    },
}

VAE = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "scaling_factor": 0.18215,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}


def write_sdxl(out, seed, half):
    """SDXL base from the config files in assets/archs/sdxl (the hub's, key for key), random
    weights under ``torch.manual_seed(seed)``. ``--half`` stores them in fp16 (5 GB instead of
    10 GB of disk): both engines then load the same values and compute in fp32."""
    from transformers import CLIPTextModelWithProjection

    arch = REPO / "assets" / "archs" / "sdxl"
    read = lambda p: json.loads((arch / p).read_text())
    save = lambda model, folder: (model.half() if half else model).save_pretrained(out / folder)
    torch.manual_seed(seed)
    save(UNet2DConditionModel.from_config(read("unet/config.json")), "unet")
    save(AutoencoderKL.from_config(read("vae/config.json")), "vae")
    save(CLIPTextModel(CLIPTextConfig(**read("text_encoder/config.json"))), "text_encoder")
    save(CLIPTextModelWithProjection(CLIPTextConfig(**read("text_encoder_2/config.json"))), "text_encoder_2")
    for folder in ("scheduler", "tokenizer", "tokenizer_2"):
        if (out / folder).exists():
            shutil.rmtree(out / folder)
        shutil.copytree(arch / folder, out / folder)
    shutil.copy(arch / "model_index.json", out / "model_index.json")
    print(f"wrote sdxl with seed {seed} to {out}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", choices=sorted(ARCHS) + ["sdxl"], default="sd-turbo")
    ap.add_argument("--half", action="store_true", help="sdxl: store the weights in fp16")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--configs-only",
        action="store_true",
        help="write the config files and tokenizer only (what `imagine bench --arch` builds on;"
        " assets/archs/ holds them)",
    )
    args = ap.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    if args.arch == "sdxl":
        write_sdxl(out, args.seed, args.half)
        return
    arch = ARCHS[args.arch]

    if args.configs_only:
        # Meta tensors: the full config.json diffusers writes, without allocating weights.
        with torch.device("meta"):
            UNet2DConditionModel.from_config(arch["unet"]).save_config(out / "unet")
            AutoencoderKL.from_config(VAE).save_config(out / "vae")
        CLIPTextConfig(**arch["text"]).save_pretrained(out / "text_encoder")
    else:
        torch.manual_seed(args.seed)
        UNet2DConditionModel.from_config(arch["unet"]).save_pretrained(out / "unet")
        AutoencoderKL.from_config(VAE).save_pretrained(out / "vae")
        CLIPTextModel(CLIPTextConfig(**arch["text"])).save_pretrained(out / "text_encoder")

    (out / "scheduler").mkdir(exist_ok=True)
    (out / "scheduler" / "scheduler_config.json").write_text(
        json.dumps(arch["scheduler"], indent=2)
    )
    tok = out / "tokenizer"
    if tok.exists():
        shutil.rmtree(tok)
    shutil.copytree(REPO / "assets" / "models" / "tiny-sd2-v" / "tokenizer", tok)
    index = {
        "_class_name": "StableDiffusionPipeline",
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", arch["scheduler"]["_class_name"]],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (out / "model_index.json").write_text(json.dumps(index, indent=2))
    print(f"wrote {args.arch} with seed {args.seed} to {out}")


if __name__ == "__main__":
    main()
