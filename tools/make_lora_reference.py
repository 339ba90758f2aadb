#!/usr/bin/env python3
"""Build two tiny random LoRAs for ``assets/models/tiny-sd15`` and diffusers' images with them.

What this makes (committed; regenerate only by hand):

* ``assets/models/loras/tiny-sd15-kohya.safetensors`` -- a kohya / web-UI format LoRA
  (``lora_unet_*`` / ``lora_te_*``, ``.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``,
  stored in fp16 as kohya's scripts save them): every attention projection of the UNet's
  first transformer block and of the mid block, a feed-forward layer, every projection of the
  text encoder's first layer and its MLP, a 1x1 ``proj_in`` and one LoCon 3x3 convolution
  (``down_blocks.0.resnets.0.conv1``); ranks 4 and 2, alphas different from the ranks.
* ``assets/models/loras/tiny-sd15-peft.safetensors`` -- a diffusers / PEFT LoRA made by PEFT
  (``add_adapter`` with a ``LoraConfig``, ``lora_alpha`` != ``r``) and saved by
  ``StableDiffusionPipeline.save_lora_weights`` with its adapter metadata, as diffusers'
  training scripts save them.
* ``assets/reference/tiny-sd15-lora.safetensors`` + ``.json`` -- images of the real
  ``StableDiffusionPipeline`` (Euler, 8 steps, guidance 7.5, the negative prompt, the shared
  reference latents) after ``load_lora_weights`` + ``fuse_lora(lora_scale=s)``: each LoRA at
  s = 0.5 and 1.0, and both at once (kohya 0.5 + PEFT 1.0 via ``set_adapters``).

The LoRAs' values are scaled so that their effect is far above the 2/255 parity bound: the
script checks that every image differs from the base model's by much more, that the two
scales differ, and that leaving out any single module of the kohya LoRA changes the image by
more than 2/255 (so a layer the engine failed to patch would fail the test).

Run (never in CI; CPU only, about a minute):
    .venv/bin/python tools/make_lora_reference.py
"""

import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import torch
from safetensors.torch import load_file, save_file

import diffusers
import peft
import transformers
from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline
from peft import LoraConfig, inject_adapter_in_model
from peft.utils import get_peft_model_state_dict

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "assets" / "models" / "tiny-sd15"
LORAS = ROOT / "assets" / "models" / "loras"
REF = ROOT / "assets" / "reference"

PROMPT = "a brown puppy on the beach"
NEGATIVE = "blurry, low quality"
STEPS = 8
GUIDANCE = 7.5
SCALES = (0.5, 1.0)

# (diffusers module path, rank) of the kohya LoRA's modules. One alpha for the whole file, as
# kohya's scripts write it: diffusers 0.42.1 mis-reads per-module alphas of attention layers
# (its alpha_pattern keys keep the `processor.to_k_lora` spelling and are ignored).
KOHYA_ALPHA = 3.0
BLOCK = "down_blocks.0.attentions.0.transformer_blocks.0"
KOHYA_UNET = [
    *[(f"{BLOCK}.{a}.{p}", 4) for a in ("attn1", "attn2") for p in ("to_q", "to_k", "to_v", "to_out.0")],
    (f"{BLOCK}.ff.net.2", 2),
    ("down_blocks.0.attentions.0.proj_in", 4),  # a 1x1 convolution in SD 1.x
    ("down_blocks.0.resnets.0.conv1", 4),  # LoCon: a 3x3 convolution
]
# Only the text encoder's MLP: with transformers 5, diffusers 0.42.1 converts kohya's
# `self_attn_q_proj` to `self_attn.to_q_lora` and then drops it as an unexpected key, so its
# images would not show attention patches (the PEFT LoRA covers text-encoder attention).
KOHYA_TE = [(f"text_model.encoder.layers.0.mlp.{p}", 4) for p in ("fc1", "fc2")]
# How strongly the random LoRAs act (the std of a delta relative to the layer's weights).
STRENGTH = 1.5


def versions():
    return {
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "python": sys.version.split()[0],
    }


def load_pipe():
    pipe = StableDiffusionPipeline.from_pretrained(MODEL, safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def module_of(root, path):
    """A submodule by its diffusers path; text encoders accept the `text_model.` spelling
    whether or not this transformers version has that level."""
    try:
        return root.get_submodule(path)
    except AttributeError:
        return root.get_submodule(path.removeprefix("text_model."))


def random_pair(weight, rank, alpha, gen):
    """down/up with ΔW = alpha/rank · up·down of std ≈ STRENGTH · std(W)."""
    out, cin = weight.shape[0], weight.shape[1]
    kernel = weight.shape[2:] if weight.dim() == 4 else ()
    fan_in = cin * int(np.prod(kernel)) if kernel else cin
    down = torch.randn((rank, cin, *kernel), generator=gen) / fan_in**0.5
    up = torch.randn((out, rank, *((1, 1) if kernel else ())), generator=gen) / rank**0.5
    up *= STRENGTH * float(weight.detach().std()) * fan_in**0.5 * rank / alpha
    return down, up


def kohya_name(prefix, path):
    return prefix + path.replace(".", "_")


def make_kohya(pipe, path):
    gen = torch.Generator().manual_seed(11)
    sd = {}
    for root, prefix, modules in ((pipe.unet, "lora_unet_", KOHYA_UNET), (pipe.text_encoder, "lora_te_", KOHYA_TE)):
        for module, rank in modules:
            alpha = KOHYA_ALPHA
            down, up = random_pair(module_of(root, module).weight, rank, alpha, gen)
            name = kohya_name(prefix, module)
            sd[f"{name}.lora_down.weight"] = down.half().contiguous()
            sd[f"{name}.lora_up.weight"] = up.half().contiguous()
            sd[f"{name}.alpha"] = torch.tensor(alpha).half()
    save_file(sd, path, metadata={"ss_network_module": "networks.lora", "ss_network_dim": "4"})
    return sd


def make_peft(path):
    """A LoRA as diffusers' training scripts make one: PEFT adapters on the UNet's attention
    projections and a ResNet convolution, and on the text encoder's attention, with
    lora_alpha != r, saved with diffusers' own save_lora_weights (with adapter metadata)."""
    pipe = load_pipe()
    unet_cfg = LoraConfig(r=4, lora_alpha=6, init_lora_weights="gaussian",
                          target_modules=["to_q", "to_k", "to_v", "to_out.0", "conv2"])
    te_cfg = LoraConfig(r=2, lora_alpha=4, init_lora_weights="gaussian",
                        target_modules=["q_proj", "k_proj", "v_proj", "out_proj"])
    pipe.unet.add_adapter(unet_cfg)
    # transformers' own add_adapter wants a newer PEFT than diffusers does; PEFT's injection
    # is what it calls.
    inject_adapter_in_model(te_cfg, pipe.text_encoder)
    gen = torch.Generator().manual_seed(12)
    with torch.no_grad():
        for root, cfg in ((pipe.unet, unet_cfg), (pipe.text_encoder, te_cfg)):
            for name, mod in root.named_modules():
                if hasattr(mod, "lora_A") and "default" in mod.lora_A:
                    a, b = mod.lora_A["default"].weight, mod.lora_B["default"].weight
                    down, up = random_pair(mod.base_layer.weight, cfg.r, cfg.lora_alpha, gen)
                    a.copy_(down.reshape(a.shape))
                    b.copy_(up.reshape(b.shape))
    with tempfile.TemporaryDirectory() as tmp:
        StableDiffusionPipeline.save_lora_weights(
            tmp,
            unet_lora_layers=get_peft_model_state_dict(pipe.unet),
            text_encoder_lora_layers=get_peft_model_state_dict(pipe.text_encoder),
            unet_lora_adapter_metadata=unet_cfg.to_dict(),
            text_encoder_lora_adapter_metadata=te_cfg.to_dict(),
            weight_name="lora.safetensors",
        )
        Path(tmp, "lora.safetensors").replace(path)


def generate(pipe, latents):
    images = pipe(
        PROMPT, negative_prompt=NEGATIVE, latents=latents.clone(), num_inference_steps=STEPS,
        guidance_scale=GUIDANCE, height=64, width=64, num_images_per_prompt=2, output_type="np",
    ).images
    return (torch.from_numpy(np.ascontiguousarray(images)).float() * 255).round().to(torch.uint8)


def with_loras(latents, loras, scale=1.0):
    """diffusers' pipeline after load_lora_weights + fuse_lora: `loras` is [(path, weight)]."""
    pipe = load_pipe()
    names = []
    for i, (path, _) in enumerate(loras):
        pipe.load_lora_weights(str(path), adapter_name=f"l{i}")
        names.append(f"l{i}")
    if len(loras) > 1:
        pipe.set_adapters(names, adapter_weights=[w for _, w in loras])
    pipe.fuse_lora(lora_scale=scale, adapter_names=names)
    with torch.no_grad():
        return generate(pipe, latents)


def levels(a, b):
    d = (a.int() - b.int()).abs()
    return {"max": int(d.max()), "mean": round(float(d.float().mean()), 3)}


def main():
    print("versions:", versions())
    LORAS.mkdir(parents=True, exist_ok=True)
    latents = load_file(REF / "latents_2x4x8x8.safetensors")["latents"]
    kohya_path, peft_path = LORAS / "tiny-sd15-kohya.safetensors", LORAS / "tiny-sd15-peft.safetensors"

    base_pipe = load_pipe()
    with torch.no_grad():
        base = generate(base_pipe, latents)
    kohya_sd = make_kohya(base_pipe, kohya_path)
    make_peft(peft_path)

    t, meta = {"image_base_u8": base}, {"versions": versions(), "effect": {}}
    for name, path in (("kohya", kohya_path), ("peft", peft_path)):
        for s in SCALES:
            img = with_loras(latents, [(path, 1.0)], scale=s)
            t[f"image_{name}_{s}_u8"] = img
            meta["effect"][f"{name} at {s} vs base"] = levels(img, base)
            assert levels(img, base)["mean"] > 4 and levels(img, base)["max"] > 20, f"{name} at {s} barely changes the image"
        meta["effect"][f"{name} 0.5 vs 1.0"] = levels(t[f"image_{name}_0.5_u8"], t[f"image_{name}_1.0_u8"])
        assert meta["effect"][f"{name} 0.5 vs 1.0"]["max"] > 20
    t["image_both_u8"] = with_loras(latents, [(kohya_path, 0.5), (peft_path, 1.0)])
    meta["effect"]["both vs peft 1.0"] = levels(t["image_both_u8"], t["image_peft_1.0_u8"])

    # Leaving out any one module must show: a layer the engine missed would fail the test.
    full = t["image_kohya_1.0_u8"]
    modules = sorted({k.split(".")[0] for k in kohya_sd})
    weakest = None
    with tempfile.TemporaryDirectory() as tmp:
        for m in modules:
            partial = {k: v for k, v in kohya_sd.items() if k.split(".")[0] != m}
            p = Path(tmp) / "partial.safetensors"
            save_file(partial, p)
            d = levels(with_loras(latents, [(p, 1.0)]), full)
            print(f"  without {m}: {d}")
            meta["effect"][f"kohya 1.0 without {m}"] = d
            if weakest is None or d["max"] < weakest[1]["max"]:
                weakest = (m, d)
    meta["effect"]["weakest single module (kohya 1.0 without it)"] = {"module": weakest[0], **weakest[1]}
    assert weakest[1]["max"] > 2, f"leaving out {weakest[0]} changes no pixel by more than 2 levels"

    meta["pipeline_call"] = (
        "load_lora_weights(file) + fuse_lora(lora_scale=s); both: set_adapters([kohya, peft], [0.5, 1.0]) "
        "+ fuse_lora(); then pipe(prompt, negative_prompt, latents, 8 steps, guidance 7.5, 64x64, 2 images), "
        "EulerDiscreteScheduler from the model's config"
    )
    save_file({k: v.contiguous() for k, v in t.items()}, REF / "tiny-sd15-lora.safetensors")
    (REF / "tiny-sd15-lora.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    print(json.dumps(meta["effect"], indent=2))


if __name__ == "__main__":
    main()
