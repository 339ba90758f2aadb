#!/usr/bin/env python3
"""Build a tiny SDXL single-file checkpoint and diffusers' reference images for it.

What this makes (committed; regenerate only by hand, never in CI):

* ``assets/models/tiny-sdxl-clip.safetensors`` -- a tiny SDXL-architecture pipeline whose two
  tokenizers/text encoders use CLIP's real 49,408-token vocabulary (a single file carries no
  tokenizer: the engine's built-in one must fit), converted to the original SGM layout
  (``model.diffusion_model.*``, ``first_stage_model.*``, ``conditioner.embedders.0.transformer.*``,
  ``conditioner.embedders.1.model.*`` with OpenCLIP's fused in_proj and transposed
  text_projection) by diffusers' own ``scripts/convert_diffusers_to_original_sdxl.py``.
  Heads follow SDXL's convention (64-channel heads in the UNet; one head for the 32-wide text
  encoders), because a single file does not record them. Weights are stored in fp16 (small
  files); every side computes in f32 from the same values. The diffusers folder it came from
  is written to a temporary directory only (it configures ``from_single_file``).
* ``assets/reference/tiny-sdxl-single.safetensors`` + ``.json`` -- diffusers
  ``StableDiffusionXLPipeline`` images of the folder the file was converted from: Euler,
  guidance 7.5, negative prompt, 8 steps, the committed reference latents.

Run (CPU, under a minute), with diffusers' converter from a checkout:
    .venv/bin/python tools/make_sdxl_single_file_reference.py \
        --converter DIFFUSERS/scripts/convert_diffusers_to_original_sdxl.py --converter-commit SHA
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_reference as mr  # noqa: E402
import make_single_file_reference as sf  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from diffusers import (  # noqa: E402
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection  # noqa: E402

from make_sdxl_reference import SDXL_SCHEDULER  # noqa: E402

OUT = mr.MODELS / "tiny-sdxl-clip.safetensors"


def halve(module):
    """Round the weights to fp16 values (what the file stores), keep computing in f32."""
    module.load_state_dict({k: v.float() for k, v in sf.half_state(module).items()})
    return module


def build(folder, vocab, merges):
    tok, _ = sf.make_tokenizer(vocab, merges, "<|endoftext|>")
    tok2, _ = sf.make_tokenizer(vocab, merges, "!")
    text = lambda act, pad, **kw: CLIPTextConfig(
        vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=3, num_attention_heads=1,
        max_position_embeddings=77, hidden_act=act, bos_token_id=49406, pad_token_id=pad, **kw)
    torch.manual_seed(30)
    te = halve(CLIPTextModel(text("quick_gelu", 49407, eos_token_id=2)).eval())
    torch.manual_seed(31)
    te2 = halve(CLIPTextModelWithProjection(text("gelu", 0, eos_token_id=2, projection_dim=32)).eval())
    torch.manual_seed(32)
    unet = halve(UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(64, 64), layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(1, 1), transformer_layers_per_block=(1, 2), use_linear_projection=True,
        cross_attention_dim=64, norm_num_groups=32, addition_embed_type="text_time",
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=32 + 6 * 8,
    ))
    torch.manual_seed(33)
    vae = halve(AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(32, 32, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4, layers_per_block=1, norm_num_groups=32, sample_size=64,
        scaling_factor=0.13025, force_upcast=True,
    ))
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=te, text_encoder_2=te2, tokenizer=tok, tokenizer_2=tok2,
                                     unet=unet, scheduler=EulerDiscreteScheduler.from_config(SDXL_SCHEDULER),
                                     force_zeros_for_empty_prompt=True)
    pipe.save_pretrained(folder, safe_serialization=True)
    # transformers 5 saves CLIPTextModel without the `text_model.` prefix the hub's files have;
    # the converter copies names as they are, and diffusers' single-file loader then finds no
    # first text encoder (and silently keeps a random one). Write the hub's names.
    path = folder / "text_encoder" / "model.safetensors"
    save_file({(k if k.startswith("text_model.") else "text_model." + k): v for k, v in load_file(path).items()}, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--converter", required=True, help="diffusers' scripts/convert_diffusers_to_original_sdxl.py")
    ap.add_argument("--converter-commit", default="unknown")
    args = ap.parse_args()
    vocab, merges = sf.clip_vocab()
    folder = Path(tempfile.mkdtemp(prefix="tiny-sdxl-clip")) / "tiny-sdxl-clip"
    build(folder, vocab, merges)
    subprocess.run([sys.executable, args.converter, "--model_path", str(folder), "--checkpoint_path", str(OUT),
                    "--use_safetensors", "--half"], check=True, stdout=subprocess.DEVNULL)
    latents = load_file(mr.REF / "latents_2x4x8x8.safetensors")["latents"]
    # The reference runs the folder the file was converted from. diffusers' own
    # `from_single_file(file, config=folder)` is not used: with transformers 5's tensor names
    # it loads one of the two text encoders from this tiny file only partly (the other stays
    # random or on the meta device), so it is no reference. The file holds the folder's
    # weights exactly (the converter only renames; fp16 values both sides).
    pipe = StableDiffusionXLPipeline.from_pretrained(folder, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    with torch.no_grad():
        images = pipe(mr.PROMPT, negative_prompt=mr.NEGATIVE, latents=latents.clone(), num_inference_steps=mr.STEPS,
                      guidance_scale=mr.GUIDANCE, height=64, width=64, num_images_per_prompt=2,
                      output_type="np").images
    img = torch.from_numpy(np.ascontiguousarray(images)).float()
    mr.check_not_degenerate("sdxl single file, euler", img)
    save_file({"euler": mr.to_u8(img).contiguous()}, mr.REF / "tiny-sdxl-single.safetensors")
    meta = {"versions": mr.VERSIONS, "converter": Path(args.converter).name, "converter_commit": args.converter_commit,
            "call": "from_pretrained(folder the file was converted from, torch_dtype=float32); EulerDiscreteScheduler; "
                    "8 steps, guidance 7.5, negative prompt, 64x64, reference latents"}
    (mr.REF / "tiny-sdxl-single.json").write_text(json.dumps(meta, indent=2) + "\n")
    print("done", OUT, OUT.stat().st_size)


if __name__ == "__main__":
    main()
