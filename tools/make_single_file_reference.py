#!/usr/bin/env python3
"""Build the tiny single-file checkpoints and their diffusers references.

What this makes (committed; regenerate only by hand, never in CI):

* ``assets/models/tiny-sd15-clip/`` -- a tiny SD-1.5-architecture diffusers folder whose
  tokenizer and text encoder use CLIP's real 49,408-token vocabulary (narrow: 32 wide, one
  64-channel-convention head, two layers), weights stored in fp16 to stay small.
* ``assets/models/tiny-sd15-clip.safetensors`` -- that folder converted to the original
  single-file layout by diffusers' own ``scripts/convert_diffusers_to_original_stable_diffusion.py``.
* ``assets/models/tiny-sd21-v.safetensors`` -- a tiny SD-2.x v-prediction single file. The
  converter only writes SD 2's OpenCLIP layout (``cond_stage_model.model.*``) for text
  encoders with 23+ layers, so this script runs the converter and then re-writes the text
  encoder with the converter's own ``convert_text_enc_state_dict_v20`` (fused in_proj,
  ``resblocks``, ``ln_final``), from the un-truncated encoder: like the real SD 2 files it has
  one layer more than the diffusers folder (which keeps the penultimate layer's output).
  Its ``__metadata__`` says ``modelspec.prediction_type = v``.
* ``assets/models/tiny-sd15-inpainting.safetensors`` -- a 9-input-channel SD 1.5 inpainting
  UNet with the tiny VAE and text encoder, through the same converter.
* ``assets/reference/tiny-single.safetensors`` + ``tiny-single.json`` -- diffusers
  ``from_single_file`` outputs: final images (Euler, guidance 7.5, negative prompt, 8 steps,
  the committed reference latents) for the SD 1.5 and SD 2 files, one UNet forward of the
  inpainting file, and transformers' CLIPTokenizer ids for a list of prompts with both
  paddings (``<|endoftext|>`` and ``!``).

Heads follow each family's convention (SD 1.x UNet: 8 heads; SD 2.x UNet and CLIP text
encoders: 64-channel heads, one head below 64 channels), because a single file does not
record them and the engine infers them that way.

Run (CPU, well under a minute), with diffusers' converter script from a checkout:
    .venv/bin/python tools/make_single_file_reference.py \
        --converter DIFFUSERS/scripts/convert_diffusers_to_original_stable_diffusion.py --converter-commit SHA
"""

import argparse
import gzip
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import torch
from safetensors.torch import load_file, save_file

import diffusers
import transformers
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "assets" / "models"
REF = ROOT / "assets" / "reference"
BPE = ROOT / "assets" / "tokenizer" / "bpe_simple_vocab_16e6.txt.gz"

PROMPT = "a brown puppy on the beach"
NEGATIVE = "blurry, low quality"
SIZE, STEPS, GUIDANCE = 64, 8, 7.5
UNET_T = 901.0
SD_BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
TOKEN_PROMPTS = [
    "a brown puppy on the beach",
    "A Photograph of an Astronaut riding a horse, 8k, trending on artstation!!",
    "portrait of a woman, (masterpiece:1.2), <lora:detail:0.5>, highly detailed",
    "isn't it lovely?  it's   spaced\tout\nover lines",
    "café crème brûlée, naïve façade, 東京タワー, 😀🎉",
    "1girl, 2boys, 3.14159, 1024x1024, --ar 3:2",
    "!!!! hello ! world !",
    "",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    " ".join(["word"] * 100),
]


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def clip_vocab():
    """openai/CLIP simple_tokenizer.py: 49,152 - 256 - 2 merges, 49,408 ids."""
    lines = gzip.open(BPE).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    v = list(bytes_to_unicode().values())
    v = v + [x + "</w>" for x in v] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    assert len(v) == 49408 and len(set(v)) == 49408
    return {t: i for i, t in enumerate(v)}, merges


def make_tokenizer(vocab, merges, pad):
    src = Path(tempfile.mkdtemp(prefix="tok"))
    (src / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (src / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    tok = CLIPTokenizer.from_pretrained(str(src), pad_token=pad, model_max_length=77)
    assert tok.pad_token_id == vocab[pad] and tok.eos_token_id == 49407 and tok.bos_token_id == 49406
    return tok, src


def build_unet(kind, in_channels=4):
    torch.manual_seed(0)
    common = dict(
        sample_size=8, in_channels=in_channels, out_channels=4, block_out_channels=(32, 64), layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, norm_num_groups=32,
    )
    if kind == "sd15":
        return UNet2DConditionModel(**common, attention_head_dim=8, use_linear_projection=False)
    # SD 2.x: 64-channel heads (one head below 64 channels), linear projections, upcast attention.
    return UNet2DConditionModel(**common, attention_head_dim=[1, 1], use_linear_projection=True, upcast_attention=True)


def build_vae():
    torch.manual_seed(1)
    return AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(32, 32, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4, layers_per_block=1, norm_num_groups=32, sample_size=64, scaling_factor=0.18215,
    )


def build_text_encoder(kind, pad_id):
    """Returns (encoder the folder holds, full encoder the original file holds)."""
    torch.manual_seed(2)
    cfg = CLIPTextConfig(
        vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=2 if kind == "sd15" else 3,
        num_attention_heads=1, max_position_embeddings=77, hidden_act="quick_gelu" if kind == "sd15" else "gelu",
        bos_token_id=49406, eos_token_id=49407, pad_token_id=pad_id,
    )
    full = CLIPTextModel(cfg).eval()
    if kind == "sd15":
        return full, full
    folder = CLIPTextModel(CLIPTextConfig(**{**cfg.to_dict(), "num_hidden_layers": 2})).eval()
    missing = folder.load_state_dict(full.state_dict(), strict=False)
    assert not missing.missing_keys, missing
    return folder, full


def scheduler(kind):
    if kind == "sd15":
        return PNDMScheduler.from_config(dict(**SD_BETAS, set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1,
                                              clip_sample=False, prediction_type="epsilon", timestep_spacing="leading", trained_betas=None))
    return DDIMScheduler.from_config(dict(**SD_BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1, skip_prk_steps=True,
                                          prediction_type="v_prediction", timestep_spacing="leading", trained_betas=None))


def half_state(module):
    return {k: v.detach().half().contiguous() for k, v in module.state_dict().items()}


def build_folder(kind, out, tok, tok_src, in_channels=4):
    if out.exists():
        shutil.rmtree(out)
    te, full = build_text_encoder(kind, tok.pad_token_id)
    unet, vae = build_unet(kind, in_channels), build_vae()
    # fp16 storage halves the files; every side computes in f32 from the same rounded values.
    for m in (te, full, unet, vae):
        m.load_state_dict({k: v.float() for k, v in half_state(m).items()})
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=scheduler(kind),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(out, safe_serialization=True)
    # The hub's layout, vocab.json + merges.txt, is half the size of transformers 5's tokenizer.json.
    shutil.copy(tok_src / "vocab.json", out / "tokenizer" / "vocab.json")
    shutil.copy(tok_src / "merges.txt", out / "tokenizer" / "merges.txt")
    (out / "tokenizer" / "tokenizer.json").unlink()
    for sub, name in (("unet", "diffusion_pytorch_model.safetensors"), ("vae", "diffusion_pytorch_model.safetensors"),
                      ("text_encoder", "model.safetensors")):
        path = out / sub / name
        # The hub's SD repos name the text encoder's tensors text_model.* (transformers 5
        # writes them without it); the converter keeps names as they are, so write the hub's.
        prefix = "text_model." if sub == "text_encoder" else ""
        save_file({(k if k.startswith(prefix) else prefix + k): v.half().contiguous()
                   for k, v in load_file(path).items()}, path)
    return full


def load_converter(path):
    path = Path(path)
    spec = importlib.util.spec_from_file_location("convert_to_original", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return path, mod


def convert(converter_path, folder, out, metadata=None):
    subprocess.run([sys.executable, str(converter_path), "--model_path", str(folder), "--checkpoint_path", str(out),
                    "--use_safetensors"], check=True, stdout=subprocess.DEVNULL)
    if metadata:
        save_file(load_file(out), out, metadata=metadata)


def to_open_clip_layout(converter, out, full_te, metadata):
    """Replace the converter's CLIP-layout text encoder with SD 2's OpenCLIP layout."""
    sd = {k: v for k, v in load_file(out).items() if not k.startswith("cond_stage_model.")}
    te = {"transformer." + k: v.half() for k, v in full_te.state_dict().items() if not k.endswith("position_ids")}
    te = {k if "text_model." in k else k.replace("transformer.", "transformer.text_model.", 1): v for k, v in te.items()}
    te = converter.convert_text_enc_state_dict_v20(te)
    sd.update({"cond_stage_model.model." + k: v.contiguous() for k, v in te.items()})
    save_file(sd, out, metadata=metadata)


def euler_images(pipe, latents):
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    images = pipe(PROMPT, negative_prompt=NEGATIVE, latents=latents.clone(), num_inference_steps=STEPS,
                  guidance_scale=GUIDANCE, height=SIZE, width=SIZE, num_images_per_prompt=2, output_type="np").images
    img = torch.from_numpy(np.ascontiguousarray(images)).float()
    assert img.std() > 0.05, "degenerate images"
    return (img * 255).round().to(torch.uint8)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--converter", required=True,
                    help="diffusers' scripts/convert_diffusers_to_original_stable_diffusion.py")
    ap.add_argument("--converter-commit", default="unknown", help="the diffusers commit it comes from, recorded")
    args = ap.parse_args()
    converter_path, converter = load_converter(args.converter)
    commit = args.converter_commit
    vocab, merges = clip_vocab()
    tok_eot, eot_src = make_tokenizer(vocab, merges, "<|endoftext|>")
    tok_bang, bang_src = make_tokenizer(vocab, merges, "!")
    latents = load_file(REF / "latents_2x4x8x8.safetensors")["latents"]
    t, meta = {}, {"versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                                "transformers": transformers.__version__, "converter_commit": commit}}
    scratch = Path(tempfile.mkdtemp(prefix="single"))
    load = dict(torch_dtype=torch.float32, safety_checker=None, requires_safety_checker=False)

    # SD 1.5 with the real vocabulary: folder (committed) and its single file.
    folder = MODELS / "tiny-sd15-clip"
    build_folder("sd15", folder, tok_eot, eot_src)
    single = MODELS / "tiny-sd15-clip.safetensors"
    convert(converter_path, folder, single)
    from_folder = StableDiffusionPipeline.from_pretrained(folder, **load)
    from_file = StableDiffusionPipeline.from_single_file(str(single), config=str(folder), **load)
    for a, b in ((from_folder.unet, from_file.unet), (from_folder.vae, from_file.vae), (from_folder.text_encoder, from_file.text_encoder)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), type(a)
    from_file.set_progress_bar_config(disable=True)
    t["sd15_euler_u8"] = euler_images(from_file, latents)

    # SD 2.x v-prediction: the folder only configures from_single_file; the file is committed.
    folder2 = scratch / "tiny-sd21-v"
    full_te = build_folder("sd2", folder2, tok_bang, bang_src)
    single2 = MODELS / "tiny-sd21-v.safetensors"
    convert(converter_path, folder2, single2)
    to_open_clip_layout(converter, single2, full_te, {"modelspec.prediction_type": "v"})
    pipe2 = StableDiffusionPipeline.from_single_file(str(single2), config=str(folder2), **load)
    pipe2.set_progress_bar_config(disable=True)
    assert pipe2.scheduler.config.prediction_type == "v_prediction"
    assert pipe2.text_encoder.config.num_hidden_layers == 2
    t["sd2_euler_u8"] = euler_images(pipe2, latents)

    # SD 1.5 inpainting: one UNet forward of the 9-channel UNet read from the file.
    folder3 = scratch / "tiny-sd15-inpainting"
    build_folder("sd15", folder3, tok_eot, eot_src, in_channels=9)
    single3 = MODELS / "tiny-sd15-inpainting.safetensors"
    convert(converter_path, folder3, single3)
    unet = UNet2DConditionModel.from_single_file(str(single3), config=str(folder3), subfolder="unet", torch_dtype=torch.float32)
    torch.manual_seed(5)
    x = torch.randn(2, 9, 8, 8)
    ctx = torch.randn(2, 77, 32)
    with torch.no_grad():
        t["inpaint_unet_in"], t["inpaint_unet_ctx"] = x, ctx
        t["inpaint_unet_t"] = torch.tensor([UNET_T])
        t["inpaint_unet_out"] = unet(x, UNET_T, encoder_hidden_states=ctx).sample

    meta["tokens"] = [
        {"prompt": p, "endoftext_pad": tok_eot(p, padding="max_length", max_length=77, truncation=True).input_ids,
         "bang_pad": tok_bang(p, padding="max_length", max_length=77, truncation=True).input_ids,
         "untruncated": tok_eot(p).input_ids}
        for p in TOKEN_PROMPTS
    ]
    meta["call"] = (f"from_single_file(file, config=folder, torch_dtype=float32); EulerDiscreteScheduler.from_config; "
                    f"pipe({PROMPT!r}, negative_prompt={NEGATIVE!r}, latents=latents_2x4x8x8, num_inference_steps={STEPS}, "
                    f"guidance_scale={GUIDANCE}, height={SIZE}, width={SIZE}, num_images_per_prompt=2)")
    save_file({k: v.contiguous() for k, v in t.items()}, REF / "tiny-single.safetensors")
    (REF / "tiny-single.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    for f in (single, single2, single3):
        print(f, f.stat().st_size)


if __name__ == "__main__":
    main()
