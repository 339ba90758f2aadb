#!/usr/bin/env python3
"""Build the tiny SDXL and SDXL-Turbo test models and diffusers' reference outputs.

What this makes (committed; regenerate only by hand):

* ``assets/models/tiny-sdxl``       -- a tiny SDXL-architecture diffusers folder: CLIP text
  encoder (quick GELU) + CLIPTextModelWithProjection (GELU, legacy eos_token_id 2, as the
  hub's text_encoder_2 config), two tokenizers (the second pads with "!"), a UNet with
  ``addition_embed_type: text_time``, per-block ``transformer_layers_per_block`` (1, 2),
  linear projections and 64-channel-style head counts, the SDXL VAE config (scaling 0.13025,
  force_upcast) and SDXL base's EulerDiscreteScheduler config; random weights.
* ``assets/models/tiny-sdxl-turbo`` -- the same architecture (other seeds) with SDXL-Turbo's
  EulerAncestralDiscreteScheduler config (trailing spacing).
* ``assets/reference/tiny-sdxl.safetensors`` + ``.json`` -- token ids of both tokenizers,
  ``encode_prompt`` outputs (both encoders' penultimate states concatenated, the pooled
  projection), one UNet forward with the added conditioning, and full pipeline runs of
  ``StableDiffusionXLPipeline``: Euler and DPM++ 2M Karras with guidance 7.5 and a negative
  prompt, Euler with an empty negative prompt (``force_zeros_for_empty_prompt``), and a 96x64
  image (the size enters the conditioning).
* ``assets/reference/tiny-sdxl-turbo.safetensors`` + ``.json`` -- SDXL-Turbo as its model
  card runs it: guidance 0, 1 step with its own Euler-a scheduler (the last step adds no
  noise, so the seeds of the two RNGs do not matter) and 2 steps with Euler (trailing).

Why: the Rust engine must match diffusers on SDXL; real checkpoints are gigabytes and the hub is
unreachable from CI. Reuses the tokenizer helpers of ``tools/make_reference.py``.

Run (never in CI; CPU, about a minute):
    .venv/bin/python tools/make_sdxl_reference.py [--bpe PATH]
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_reference as mr  # noqa: E402  (tokenizer helpers, constants)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from diffusers import (  # noqa: E402
    AutoencoderKL,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from safetensors.torch import save_file  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection  # noqa: E402

SDXL_SCHEDULER = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
    interpolation_type="linear", prediction_type="epsilon", sample_max_value=1.0,
    set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1, timestep_spacing="leading",
    trained_betas=None, use_karras_sigmas=False,
)
TURBO_SCHEDULER = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
    interpolation_type="linear", prediction_type="epsilon", sample_max_value=1.0,
    set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1, timestep_spacing="trailing",
    trained_betas=None, use_karras_sigmas=False,
)


def build_unet(seed):
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), transformer_layers_per_block=(1, 2), use_linear_projection=True,
        cross_attention_dim=64, norm_num_groups=32,
        addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=32 + 6 * 8,
    )


def build_vae(seed):
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(32, 32, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4, layers_per_block=1, norm_num_groups=32, sample_size=64,
        scaling_factor=0.13025, force_upcast=True,
    )


def text_config(vocab, pad_id, act, **extra):
    return CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=3,
        num_attention_heads=4, max_position_embeddings=77, hidden_act=act,
        bos_token_id=vocab["<|startoftext|>"], pad_token_id=pad_id, **extra,
    )


def build_model(name, seed, scheduler, vocab, merges):
    out = mr.MODELS / name
    if out.exists():
        shutil.rmtree(out)
    tok = mr.make_tokenizer(vocab, merges, "<|endoftext|>")
    tok2 = mr.make_tokenizer(vocab, merges, "!")
    torch.manual_seed(seed + 2)
    te = CLIPTextModel(text_config(vocab, vocab["<|endoftext|>"], "quick_gelu",
                                   eos_token_id=vocab["<|endoftext|>"])).eval()
    torch.manual_seed(seed + 3)
    # The hub's SDXL text_encoder_2 config keeps the legacy eos_token_id 2 (pool at argmax).
    te2 = CLIPTextModelWithProjection(text_config(vocab, vocab["!"], "gelu", eos_token_id=2,
                                                  projection_dim=32)).eval()
    pipe = StableDiffusionXLPipeline(
        vae=build_vae(seed + 1), text_encoder=te, text_encoder_2=te2, tokenizer=tok, tokenizer_2=tok2,
        unet=build_unet(seed), scheduler=scheduler, force_zeros_for_empty_prompt=True,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    for folder in ("tokenizer", "tokenizer_2"):
        mr.ensure_tokenizer_layout(out / folder, vocab, merges)


def load(name):
    pipe = StableDiffusionXLPipeline.from_pretrained(mr.MODELS / name)
    pipe.set_progress_bar_config(disable=True)
    for m in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
        m.eval()
    return pipe


def run(pipe, latents, steps, guidance, negative, width=64, height=64):
    images = pipe(
        mr.PROMPT, negative_prompt=negative, latents=latents.clone(), num_inference_steps=steps,
        guidance_scale=guidance, height=height, width=width, num_images_per_prompt=latents.shape[0],
        output_type="np",
    ).images
    img = torch.from_numpy(np.ascontiguousarray(images)).float()
    mr.check_not_degenerate(f"{steps} steps, guidance {guidance}", img)
    return mr.to_u8(img)


def sdxl_reference(latents):
    name = "tiny-sdxl"
    print(f"== {name}")
    pipe = load(name)
    t, meta = {}, {"versions": mr.VERSIONS, "prompt": mr.PROMPT, "negative": mr.NEGATIVE,
                   "steps": mr.STEPS, "guidance": mr.GUIDANCE}
    with torch.no_grad():
        t["input_ids"] = torch.tensor([mr.tokenize(pipe.tokenizer, mr.PROMPT)])
        t["input_ids_2"] = torch.tensor([mr.tokenize(pipe.tokenizer_2, mr.PROMPT)])
        pe, ne, pp, npool = pipe.encode_prompt(mr.PROMPT, negative_prompt=mr.NEGATIVE, device="cpu",
                                               do_classifier_free_guidance=True)
        t["prompt_embeds"], t["negative_embeds"] = pe, ne
        t["pooled"], t["negative_pooled"] = pp, npool
        # One UNet forward with the added conditioning, batch [uncond, cond].
        ctx = torch.cat([ne, pe])
        added = {"text_embeds": torch.cat([npool, pp]),
                 "time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]] * 2)}
        t["unet_in"] = latents.clone()
        t["unet_t"] = torch.tensor([mr.UNET_T])
        t["unet_ctx"], t["unet_text_embeds"], t["unet_time_ids"] = ctx, added["text_embeds"], added["time_ids"]
        t["unet_out"] = pipe.unet(latents, t["unet_t"], encoder_hidden_states=ctx, added_cond_kwargs=added).sample
        meta["unet_out_stats"] = mr.stats("unet_out", t["unet_out"])
        base = pipe.scheduler.config
        pipe.scheduler = EulerDiscreteScheduler.from_config(base)
        t["euler"] = run(pipe, latents, mr.STEPS, mr.GUIDANCE, mr.NEGATIVE)
        t["euler_zero_negative"] = run(pipe, latents, mr.STEPS, mr.GUIDANCE, None)
        wide = torch.randn([1, 4, 8, 12], generator=torch.Generator().manual_seed(mr.LATENT_SEED + 1))
        t["wide_latents"] = wide
        t["euler_96x64"] = run(pipe, wide, mr.STEPS, mr.GUIDANCE, mr.NEGATIVE, width=96, height=64)
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(
            base, use_karras_sigmas=True, algorithm_type="dpmsolver++", solver_order=2)
        t["dpmpp_2m_karras"] = run(pipe, latents, mr.STEPS, mr.GUIDANCE, mr.NEGATIVE)
        diff = (t["euler"].float() - t["euler_zero_negative"].float()).abs().mean()
        meta["zero_negative_vs_negative_mean_abs"] = float(diff)
        assert diff > 1.0, "an empty negative prompt should change the images"
    save_file({k: v.contiguous() for k, v in t.items()}, mr.REF / f"{name}.safetensors")
    (mr.REF / f"{name}.json").write_text(json.dumps(meta, indent=2) + "\n")


def turbo_reference(latents):
    name = "tiny-sdxl-turbo"
    print(f"== {name}")
    pipe = load(name)
    t, meta = {}, {"versions": mr.VERSIONS, "prompt": mr.PROMPT, "guidance": 0.0}
    with torch.no_grad():
        assert isinstance(pipe.scheduler, EulerAncestralDiscreteScheduler)
        t["euler_a_1_step"] = run(pipe, latents, 1, 0.0, None)
        pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
        t["euler_2_steps"] = run(pipe, latents, 2, 0.0, None)
    save_file({k: v.contiguous() for k, v in t.items()}, mr.REF / f"{name}.safetensors")
    (mr.REF / f"{name}.json").write_text(json.dumps(meta, indent=2) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bpe", help="path to bpe_simple_vocab_16e6.txt.gz (default: pip download open_clip_torch)")
    args = ap.parse_args()
    merges = mr.load_merges(mr.find_bpe_file(args.bpe))
    vocab = mr.build_vocab(merges)
    latents = torch.randn([2, 4, 8, 8], generator=torch.Generator().manual_seed(mr.LATENT_SEED))
    build_model("tiny-sdxl", 10, EulerDiscreteScheduler.from_config(SDXL_SCHEDULER), vocab, merges)
    build_model("tiny-sdxl-turbo", 20, EulerAncestralDiscreteScheduler.from_config(TURBO_SCHEDULER), vocab, merges)
    sdxl_reference(latents)
    turbo_reference(latents)
    print("done")


if __name__ == "__main__":
    main()
