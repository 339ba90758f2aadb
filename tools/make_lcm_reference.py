#!/usr/bin/env python3
"""Build the tiny LCM-distilled test model and the diffusers LCM reference outputs.

What this makes (committed; regenerate only by hand, after ``make_reference.py``):

* ``assets/models/tiny-lcm`` -- tiny-sd15's architecture with ``time_cond_proj_dim`` 32 (the
  guidance embedding of LCM-distilled UNets such as SimianLuo/LCM_Dreamshaper_v7), random UNet
  weights, tiny-sd15's own text encoder, tokenizer and VAE (copied byte for byte), and
  LCM_Dreamshaper_v7's ``LCMScheduler`` config, as a ``LatentConsistencyModelPipeline`` folder.
* ``assets/reference/tiny-lcm.safetensors`` + ``tiny-lcm.json`` -- for the engine's
  ``tests/lcm.rs``:
  - ``lcm_*``: diffusers' ``LatentConsistencyModelPipeline`` on tiny-lcm, 4 steps, guidance
    8.0 (one batch, the scale as an embedding), from the reference latents; plus one UNet
    forward with that embedding (``unet_*``).
  - ``sd15_g1_*`` and ``sd15_g15_*``: ``StableDiffusionPipeline`` on tiny-sd15 with
    ``LCMScheduler.from_config(...)`` at 4 steps, guidance 1.0 and 1.5 (with the negative
    prompt), as LCM-LoRAs are run.
  Each run's ``*_timesteps``, final ``*_image_u8`` and ``*_step_noise``: LCM adds fresh noise
  after every step but the last; the script records the noise diffusers drew (``[3, 2, 4, 8,
  8]``) so that the engine can replay it (``GenerateRequest::step_noise``) and be compared
  pixel for pixel.

Run (never in CI; CPU, seconds):
    .venv/bin/python tools/make_lcm_reference.py
"""

import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import make_reference as mr  # noqa: E402  (sets the offline env and torch's determinism)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from diffusers import (  # noqa: E402
    LatentConsistencyModelPipeline,
    LCMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers.schedulers import scheduling_lcm  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

NAME = "tiny-lcm"
STEPS = 4
LCM_GUIDANCE = 8.0
LCM_LORA_GUIDANCES = {"sd15_g1": 1.0, "sd15_g15": 1.5}
TIME_COND_PROJ_DIM = 32
UNET_T = 999
NOISE_SEED = 7

# SimianLuo/LCM_Dreamshaper_v7's scheduler_config.json.
LCM_SCHEDULER = dict(
    **mr.SD_BETAS, clip_sample=False, clip_sample_range=1.0, dynamic_thresholding_ratio=0.995,
    original_inference_steps=50, prediction_type="epsilon", rescale_betas_zero_snr=False,
    sample_max_value=1.0, set_alpha_to_one=True, steps_offset=1, thresholding=False,
    timestep_scaling=10.0, timestep_spacing="leading", trained_betas=None,
)


class NoiseRecorder:
    """Wraps ``randn_tensor`` inside diffusers' LCM scheduler module and keeps every draw."""

    def __init__(self):
        self.draws = []
        self._original = scheduling_lcm.randn_tensor

    def __enter__(self):
        def recording(*args, **kwargs):
            x = self._original(*args, **kwargs)
            self.draws.append(x.clone())
            return x

        scheduling_lcm.randn_tensor = recording
        return self

    def __exit__(self, *exc):
        scheduling_lcm.randn_tensor = self._original

    def stacked(self):
        return torch.stack(self.draws).contiguous()


def build_model():
    """tiny-sd15 with an LCM UNet and scheduler; the other components copied unchanged."""
    base = mr.MODELS / "tiny-sd15"
    out = mr.MODELS / NAME
    if out.exists():
        shutil.rmtree(out)
    unet_cfg = UNet2DConditionModel.load_config(base / "unet")
    unet_cfg["time_cond_proj_dim"] = TIME_COND_PROJ_DIM
    torch.manual_seed(3)
    unet = UNet2DConditionModel.from_config(unet_cfg)
    sd = StableDiffusionPipeline.from_pretrained(base, safety_checker=None, requires_safety_checker=False)
    pipe = LatentConsistencyModelPipeline(
        vae=sd.vae, text_encoder=sd.text_encoder, tokenizer=sd.tokenizer, unet=unet,
        scheduler=LCMScheduler.from_config(LCM_SCHEDULER),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    for component in ("text_encoder", "tokenizer", "vae"):
        shutil.rmtree(out / component)
        shutil.copytree(base / component, out / component)


def run(pipe, tensors, key, latents, guidance, **kwargs):
    """One 4-step pipeline call from the reference latents; stores timesteps, step noise and
    the uint8 images under ``key``."""
    with NoiseRecorder() as noise:
        images = pipe(
            mr.PROMPT, latents=latents.clone(), num_inference_steps=STEPS, guidance_scale=guidance,
            height=mr.HEIGHT, width=mr.WIDTH, num_images_per_prompt=mr.NUM_IMAGES, output_type="np",
            generator=torch.Generator().manual_seed(NOISE_SEED), **kwargs,
        ).images
    img = torch.from_numpy(np.ascontiguousarray(images)).float()
    stats = mr.check_not_degenerate(key, img)
    tensors[f"{key}_timesteps"] = pipe.scheduler.timesteps.to(torch.float32)
    tensors[f"{key}_step_noise"] = noise.stacked()
    tensors[f"{key}_image_u8"] = mr.to_u8(img)
    assert tensors[f"{key}_step_noise"].shape == (STEPS - 1, mr.NUM_IMAGES, 4, 8, 8)
    return stats


def main():
    build_model()
    latents = load_file(mr.REF / "latents_2x4x8x8.safetensors")["latents"]
    t = {}
    meta = {"versions": mr.VERSIONS, "made_by": "tools/make_lcm_reference.py", "image_stats": {}}
    with torch.no_grad():
        lcm = LatentConsistencyModelPipeline.from_pretrained(
            mr.MODELS / NAME, safety_checker=None, requires_safety_checker=False
        )
        lcm.set_progress_bar_config(disable=True)
        assert isinstance(lcm.scheduler, LCMScheduler)

        # One UNet forward with the guidance embedding, as the pipeline builds it.
        w = torch.tensor(LCM_GUIDANCE - 1).repeat(mr.NUM_IMAGES)
        cond = lcm.get_guidance_scale_embedding(w, embedding_dim=TIME_COND_PROJ_DIM)
        ctx = lcm.encode_prompt(mr.PROMPT, "cpu", mr.NUM_IMAGES, False)[0]
        t["unet_in"], t["unet_ctx"], t["unet_timestep_cond"] = latents.clone(), ctx, cond
        t["unet_t"] = torch.tensor([UNET_T], dtype=torch.float32)
        t["unet_out"] = lcm.unet(latents, UNET_T, encoder_hidden_states=ctx, timestep_cond=cond).sample
        plain = lcm.unet(latents, UNET_T, encoder_hidden_states=ctx).sample
        meta["unet_out_change_from_guidance_embedding"] = float((t["unet_out"] - plain).abs().max())
        assert meta["unet_out_change_from_guidance_embedding"] > 1e-2, "the embedding changes nothing"

        meta["image_stats"]["lcm"] = run(lcm, t, "lcm", latents, LCM_GUIDANCE)

        sd = StableDiffusionPipeline.from_pretrained(
            mr.MODELS / "tiny-sd15", safety_checker=None, requires_safety_checker=False
        )
        sd.set_progress_bar_config(disable=True)
        sd.scheduler = LCMScheduler.from_config(sd.scheduler.config)
        meta["sd15_scheduler_config"] = mr.clean_config(sd.scheduler.config)
        for key, guidance in LCM_LORA_GUIDANCES.items():
            meta["image_stats"][key] = run(sd, t, key, latents, guidance, negative_prompt=mr.NEGATIVE)

    for k in list(t):
        t[k] = t[k].contiguous()
    save_file(t, mr.REF / f"{NAME}.safetensors")
    meta.update(
        prompt=mr.PROMPT, negative_prompt=mr.NEGATIVE, steps=STEPS, lcm_guidance=LCM_GUIDANCE,
        lcm_lora_guidances=LCM_LORA_GUIDANCES, time_cond_proj_dim=TIME_COND_PROJ_DIM,
        noise_seed=NOISE_SEED, latents="assets/reference/latents_2x4x8x8.safetensors",
        lcm_call="LatentConsistencyModelPipeline(prompt, latents, num_inference_steps=4, guidance_scale=8.0, "
                 "num_images_per_prompt=2, 64x64, generator=manual_seed(7))",
        sd15_call="StableDiffusionPipeline with LCMScheduler.from_config(tiny-sd15's config), "
                  "negative_prompt, guidance 1.0 / 1.5, otherwise as lcm_call",
        u8_rule="(image*255).round() as uint8",
        tensors={k: {"dtype": str(v.dtype).replace("torch.", ""), "shape": list(v.shape)} for k, v in t.items()},
    )
    (mr.REF / f"{NAME}.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    print("done")


if __name__ == "__main__":
    main()
