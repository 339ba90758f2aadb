#!/usr/bin/env python3
"""Build a tiny random LCM-LoRA for ``assets/models/tiny-sd15`` and diffusers' 4-step images with it.

What this makes (committed; regenerate only by hand, after ``make_lcm_reference.py``):

* ``assets/models/loras/tiny-sd15-lcm-lora.safetensors`` -- a LoRA in the layout of
  latent-consistency/lcm-lora-sdv1-5's ``pytorch_lora_weights.safetensors``: web-UI keys spelled
  from the diffusers module paths (``lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight``,
  ``.lora_up.weight``, ``.alpha``), UNet only, on every layer of the kinds LCM-LoRA trains
  (attention projections, feed-forwards, ``proj_in``/``proj_out``, ResNet ``conv1``/``conv2``/
  ``conv_shortcut``/``time_emb_proj``, down- and upsampler convolutions), fp16.
* ``assets/reference/tiny-sd15-lcm-lora.safetensors`` + ``.json`` -- the LCM-LoRA workflow as its
  model card runs it: ``StableDiffusionPipeline`` with ``LCMScheduler.from_config(...)``,
  ``load_lora_weights`` + ``fuse_lora()``, 4 steps, guidance 1.0 (and 1.5 with the negative
  prompt), from the reference latents, with the per-step noise diffusers drew recorded for replay
  (see make_lcm_reference.py); plus the base model's image under the same call, to show the LoRA
  acts.

Run (never in CI; CPU, seconds):
    .venv/bin/python tools/make_lcm_lora_reference.py
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import make_lcm_reference as lcm  # noqa: E402  (NoiseRecorder, run, steps)
import make_lora_reference as lora  # noqa: E402  (random pairs, levels)
import make_reference as mr  # noqa: E402
import torch  # noqa: E402
from diffusers import LCMScheduler, StableDiffusionPipeline  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

NAME = "tiny-sd15-lcm-lora"
GUIDANCES = {"g1": 1.0, "g15": 1.5}
RANK, ALPHA = 4, 8.0
# The module kinds latent-consistency/lcm-lora-sdv1-5 trains (its adapter_config target_modules).
TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
           "conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj")


def load_pipe():
    pipe = StableDiffusionPipeline.from_pretrained(
        mr.MODELS / "tiny-sd15", safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def make_lcm_lora(pipe, path):
    gen = torch.Generator().manual_seed(31)
    sd = {}
    for name, module in pipe.unet.named_modules():
        if not any(name.endswith(t) for t in TARGETS) or not hasattr(module, "weight"):
            continue
        down, up = lora.random_pair(module.weight, RANK, ALPHA, gen)
        key = lora.kohya_name("lora_unet_", name)
        sd[f"{key}.lora_down.weight"] = down.half().contiguous()
        sd[f"{key}.lora_up.weight"] = up.half().contiguous()
        sd[f"{key}.alpha"] = torch.tensor(ALPHA).half()
    save_file(sd, path)
    return len(sd) // 3


def main():
    latents = load_file(mr.REF / "latents_2x4x8x8.safetensors")["latents"]
    path = lora.LORAS / f"{NAME}.safetensors"
    t, meta = {}, {"versions": mr.VERSIONS, "made_by": "tools/make_lcm_lora_reference.py", "image_stats": {}}
    with torch.no_grad():
        base = load_pipe()
        meta["modules"] = make_lcm_lora(base, path)
        lcm.run(base, t, "base_g1", latents, 1.0)
        pipe = load_pipe()
        pipe.load_lora_weights(str(path))
        pipe.fuse_lora()
        for key, guidance in GUIDANCES.items():
            kwargs = {"negative_prompt": mr.NEGATIVE} if guidance > 1 else {}
            meta["image_stats"][key] = lcm.run(pipe, t, key, latents, guidance, **kwargs)
    meta["effect"] = {"lora g1 vs base g1": lora.levels(t["g1_image_u8"], t["base_g1_image_u8"])}
    assert meta["effect"]["lora g1 vs base g1"]["mean"] > 4, meta["effect"]
    save_file({k: v.contiguous() for k, v in t.items()}, mr.REF / f"{NAME}.safetensors")
    meta.update(
        prompt=mr.PROMPT, negative_prompt=mr.NEGATIVE, steps=lcm.STEPS, guidances=GUIDANCES,
        noise_seed=lcm.NOISE_SEED, rank=RANK, alpha=ALPHA, targets=TARGETS,
        call="StableDiffusionPipeline(tiny-sd15) with LCMScheduler.from_config(its config), "
             "load_lora_weights(file) + fuse_lora(), 4 steps, guidance 1.0 (1.5 with the negative prompt), "
             "latents, 2 images, 64x64, generator=manual_seed(7); base_g1: the same call without the LoRA",
    )
    (mr.REF / f"{NAME}.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
    print(json.dumps(meta["effect"], indent=2), meta["modules"], "modules")


if __name__ == "__main__":
    main()
