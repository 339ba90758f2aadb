#!/usr/bin/env python3
"""Build two tiny random SDXL LoRAs for ``assets/models/tiny-sdxl`` and diffusers' images with them.

What this makes (committed; regenerate only by hand):

* ``assets/models/loras/tiny-sdxl-kohya.safetensors`` -- a kohya / web-UI SDXL LoRA as kohya's
  sd-scripts write them: UNet modules named after the original (SGM) UNet's blocks
  (``lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q``, ``..._in_layers_2`` for a
  LoCon 3x3 ResNet convolution, ``middle_block_1``, ``output_blocks_0_1``), both text encoders'
  MLPs (``lora_te1_*``, ``lora_te2_*``), ``.alpha`` different from the ranks, fp16.
* ``assets/models/loras/tiny-sdxl-peft.safetensors`` -- a diffusers / PEFT SDXL LoRA made by
  PEFT (UNet attention projections and a ResNet convolution, both text encoders' attention,
  ``lora_alpha`` != ``r``) and saved by ``StableDiffusionXLPipeline.save_lora_weights``.
* ``assets/reference/tiny-sdxl-lora.safetensors`` + ``.json`` -- images of the real
  ``StableDiffusionXLPipeline`` (Euler, 8 steps, guidance 7.5, the negative prompt, the shared
  reference latents, 64x64) after ``load_lora_weights`` + ``fuse_lora(lora_scale=s)``: each LoRA
  at s = 0.5 and 1.0, and both at once (kohya 0.5 + PEFT 1.0 via ``set_adapters``).

As for SD 1.5 (tools/make_lora_reference.py), the LoRAs act far above the 2/255 bound, the two
scales differ, and leaving out any single module of the kohya LoRA changes the image by more
than 2/255, so a layer the engine failed to find under its SGM name would fail the test.

Run (never in CI; CPU only, about a minute):
    .venv/bin/python tools/make_sdxl_lora_reference.py
"""

import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_lora_reference as sd15  # noqa: E402  (random pairs, levels, versions)
import make_reference as mr  # noqa: E402  (prompt, latents seed)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline  # noqa: E402
from peft import LoraConfig, inject_adapter_in_model  # noqa: E402
from peft.utils import get_peft_model_state_dict  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "assets" / "models" / "tiny-sdxl"
LORAS = ROOT / "assets" / "models" / "loras"
REF = ROOT / "assets" / "reference"
STEPS, GUIDANCE, SCALES = 8, 7.5, (0.5, 1.0)
KOHYA_ALPHA = 3.0
# The tiny SDXL UNet's images move less per unit of weight change than SD 1.5's: the kohya
# LoRA's few modules get stronger deltas, so that leaving out any one of them shows. The PEFT
# LoRA patches every attention projection of both text encoders and the UNet: at that strength
# its text conditioning saturates and the images become ill-conditioned (fp32 rounding moves
# pixels), so it keeps SD 1.5's strength.
KOHYA_STRENGTH, PEFT_STRENGTH = 3.0, sd15.STRENGTH

# (SGM name as kohya writes it, diffusers module path, rank). The tiny SDXL UNet has two levels
# (DownBlock2D, CrossAttnDownBlock2D), two layers per block and 1/2 transformer layers: SGM
# numbers input_blocks 1 + 3·level + layer (.0 ResNet, .1 attention), output_blocks
# 3·level + layer, and calls conv1 `in_layers.2`.
KOHYA_UNET = [
    *[(f"input_blocks.4.1.transformer_blocks.0.{a}.{p}", f"down_blocks.1.attentions.0.transformer_blocks.0.{a}.{p}", 4)
      for a in ("attn1", "attn2") for p in ("to_q", "to_k", "to_v", "to_out.0")],
    ("input_blocks.5.1.transformer_blocks.1.ff.net.2", "down_blocks.1.attentions.1.transformer_blocks.1.ff.net.2", 2),
    ("middle_block.1.transformer_blocks.1.attn1.to_v", "mid_block.attentions.0.transformer_blocks.1.attn1.to_v", 4),
    ("output_blocks.0.1.proj_in", "up_blocks.0.attentions.0.proj_in", 4),
    ("input_blocks.1.0.in_layers.2", "down_blocks.0.resnets.0.conv1", 4),  # LoCon 3x3
]
# Only the MLPs of the text encoders, as for SD 1.5: diffusers 0.42.1 with transformers 5 drops
# kohya's text-encoder attention keys (the PEFT LoRA covers text-encoder attention).
KOHYA_TE = [
    ("lora_te1_", "text_encoder", [(f"text_model.encoder.layers.0.mlp.{p}", 4) for p in ("fc1", "fc2")]),
    ("lora_te2_", "text_encoder_2", [(f"text_model.encoder.layers.1.mlp.{p}", 2) for p in ("fc1", "fc2")]),
]


def load_pipe():
    pipe = StableDiffusionXLPipeline.from_pretrained(MODEL)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def make_kohya(pipe, path):
    sd15.STRENGTH = KOHYA_STRENGTH
    gen = torch.Generator().manual_seed(21)
    sd = {}

    def add(name, weight, rank):
        down, up = sd15.random_pair(weight, rank, KOHYA_ALPHA, gen)
        sd[f"{name}.lora_down.weight"] = down.half().contiguous()
        sd[f"{name}.lora_up.weight"] = up.half().contiguous()
        sd[f"{name}.alpha"] = torch.tensor(KOHYA_ALPHA).half()

    for sgm, module, rank in KOHYA_UNET:
        add(sd15.kohya_name("lora_unet_", sgm), pipe.unet.get_submodule(module).weight, rank)
    for prefix, attr, modules in KOHYA_TE:
        for module, rank in modules:
            add(sd15.kohya_name(prefix, module), sd15.module_of(getattr(pipe, attr), module).weight, rank)
    save_file(sd, path, metadata={"ss_network_module": "networks.lora", "ss_base_model_version": "sdxl_base_v1-0"})
    return sd


def make_peft(path):
    sd15.STRENGTH = PEFT_STRENGTH
    pipe = load_pipe()
    unet_cfg = LoraConfig(r=4, lora_alpha=6, init_lora_weights="gaussian",
                          target_modules=["to_q", "to_k", "to_v", "to_out.0", "conv2"])
    te_cfg = LoraConfig(r=2, lora_alpha=4, init_lora_weights="gaussian",
                        target_modules=["q_proj", "k_proj", "v_proj", "out_proj"])
    pipe.unet.add_adapter(unet_cfg)
    inject_adapter_in_model(te_cfg, pipe.text_encoder)
    inject_adapter_in_model(te_cfg, pipe.text_encoder_2)
    gen = torch.Generator().manual_seed(22)
    with torch.no_grad():
        for root, cfg in ((pipe.unet, unet_cfg), (pipe.text_encoder, te_cfg), (pipe.text_encoder_2, te_cfg)):
            for _, mod in root.named_modules():
                if hasattr(mod, "lora_A") and "default" in mod.lora_A:
                    a, b = mod.lora_A["default"].weight, mod.lora_B["default"].weight
                    down, up = sd15.random_pair(mod.base_layer.weight, cfg.r, cfg.lora_alpha, gen)
                    a.copy_(down.reshape(a.shape))
                    b.copy_(up.reshape(b.shape))
    with tempfile.TemporaryDirectory() as tmp:
        StableDiffusionXLPipeline.save_lora_weights(
            tmp,
            unet_lora_layers=get_peft_model_state_dict(pipe.unet),
            text_encoder_lora_layers=get_peft_model_state_dict(pipe.text_encoder),
            text_encoder_2_lora_layers=get_peft_model_state_dict(pipe.text_encoder_2),
            unet_lora_adapter_metadata=unet_cfg.to_dict(),
            text_encoder_lora_adapter_metadata=te_cfg.to_dict(),
            text_encoder_2_lora_adapter_metadata=te_cfg.to_dict(),
            weight_name="lora.safetensors",
        )
        Path(tmp, "lora.safetensors").replace(path)


def generate(pipe, latents):
    images = pipe(
        mr.PROMPT, negative_prompt=mr.NEGATIVE, latents=latents.clone(), num_inference_steps=STEPS,
        guidance_scale=GUIDANCE, height=64, width=64, num_images_per_prompt=latents.shape[0], output_type="np",
    ).images
    return (torch.from_numpy(np.ascontiguousarray(images)).float() * 255).round().to(torch.uint8)


def with_loras(latents, loras, scale=1.0):
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


def main():
    print("versions:", sd15.versions())
    LORAS.mkdir(parents=True, exist_ok=True)
    latents = load_file(REF / "latents_2x4x8x8.safetensors")["latents"]
    kohya_path, peft_path = LORAS / "tiny-sdxl-kohya.safetensors", LORAS / "tiny-sdxl-peft.safetensors"

    base_pipe = load_pipe()
    with torch.no_grad():
        base = generate(base_pipe, latents)
    kohya_sd = make_kohya(base_pipe, kohya_path)
    make_peft(peft_path)

    t, meta = {"image_base_u8": base}, {"versions": sd15.versions(), "effect": {}}
    for name, path in (("kohya", kohya_path), ("peft", peft_path)):
        for s in SCALES:
            img = with_loras(latents, [(path, 1.0)], scale=s)
            t[f"image_{name}_{s}_u8"] = img
            d = sd15.levels(img, base)
            meta["effect"][f"{name} at {s} vs base"] = d
            assert d["mean"] > 4 and d["max"] > 20, f"{name} at {s} barely changes the image: {d}"
        half_vs_full = sd15.levels(t[f"image_{name}_0.5_u8"], t[f"image_{name}_1.0_u8"])
        meta["effect"][f"{name} 0.5 vs 1.0"] = half_vs_full
        assert half_vs_full["max"] > 20
    t["image_both_u8"] = with_loras(latents, [(kohya_path, 0.5), (peft_path, 1.0)])
    meta["effect"]["both vs peft 1.0"] = sd15.levels(t["image_both_u8"], t["image_peft_1.0_u8"])

    full = t["image_kohya_1.0_u8"]
    weakest = None
    with tempfile.TemporaryDirectory() as tmp:
        for m in sorted({k.split(".")[0] for k in kohya_sd}):
            partial = {k: v for k, v in kohya_sd.items() if k.split(".")[0] != m}
            p = Path(tmp) / "partial.safetensors"
            save_file(partial, p)
            d = sd15.levels(with_loras(latents, [(p, 1.0)]), full)
            print(f"  without {m}: {d}")
            meta["effect"][f"kohya 1.0 without {m}"] = d
            if weakest is None or d["max"] < weakest[1]["max"]:
                weakest = (m, d)
    meta["effect"]["weakest single module (kohya 1.0 without it)"] = {"module": weakest[0], **weakest[1]}
    assert weakest[1]["max"] > 2, f"leaving out {weakest[0]} changes no pixel by more than 2 levels"

    meta["pipeline_call"] = (
        "StableDiffusionXLPipeline: load_lora_weights(file) + fuse_lora(lora_scale=s); both: "
        "set_adapters([kohya, peft], [0.5, 1.0]) + fuse_lora(); then pipe(prompt, negative_prompt, "
        "latents, 8 steps, guidance 7.5, 64x64, 2 images), EulerDiscreteScheduler from the model's config"
    )
    save_file({k: v.contiguous() for k, v in t.items()}, REF / "tiny-sdxl-lora.safetensors")
    (REF / "tiny-sdxl-lora.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    print(json.dumps(meta["effect"], indent=2))


if __name__ == "__main__":
    main()
