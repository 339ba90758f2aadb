#!/usr/bin/env python3
"""Build the tiny Stable Diffusion test models and the diffusers reference outputs.

What this makes (all committed to the repository, regenerate only by hand):

* ``assets/models/tiny-sd15``   -- a tiny SD-1.5-style diffusers pipeline folder
  (UNet2DConditionModel, AutoencoderKL, CLIPTextModel, CLIP BPE tokenizer,
  PNDMScheduler with SD 1.5's exact scheduler config), random weights.
* ``assets/models/tiny-sd2-v``  -- a tiny SD-2.x-768-style (v-prediction) folder:
  linear projections, per-block head counts, upcast attention, gelu text
  encoder truncated to its penultimate layer (like the real SD 2 text_encoder
  folder), "!" padding tokenizer, DDIMScheduler with SD 2.1-768's config.
* ``assets/reference/<model>.safetensors`` + ``<model>.json`` -- token ids, text
  embeddings, one UNet forward pass, full text-to-image runs of the real
  diffusers ``StableDiffusionPipeline`` with DDIM / Euler / DPM++ 2M Karras,
  and a step-by-step image-to-image run (Euler, strength 0.6).
* ``assets/reference/latents_2x4x8x8.safetensors`` -- the initial latents
  (one f32 tensor named ``latents``; the CLI's ``--init-latents`` format).
* ``assets/reference/init_64.png`` -- the deterministic img2img init image.
* ``assets/reference/tokens.json`` -- tokenizer ids for a list of prompts.

Why: the Rust engine ("Imagine", candle) must match Hugging Face diffusers
numerically.  Real SD checkpoints are gigabytes and Hugging Face is not
reachable from CI, so the Rust tests load these tiny folders (same file layout
and config keys as the hub repos) and compare against these tensors.

The tokenizer is the genuine CLIP BPE, cut to its first 1000 merges: the
original ``bpe_simple_vocab_16e6.txt.gz`` is taken from the ``open_clip_torch``
wheel on PyPI (``pip download --no-deps``), or from ``--bpe PATH``.

Weight init: models are built with PyTorch/diffusers default init under
``torch.manual_seed``; see ``fix_init`` below for the only deviation (checked
by ``check_not_degenerate``: decoded images must have spread, unsaturated
pixels and the UNet output must not be ~0).

Run (never in CI; CPU only, a few minutes):
    .venv/bin/python tools/make_reference.py
"""

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import numpy as np
import regex
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import diffusers
import transformers
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
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

NUM_MERGES = 1000
PROMPT = "a brown puppy on the beach"
NEGATIVE = "blurry, low quality"
WIDTH = HEIGHT = 64
NUM_IMAGES = 2
GUIDANCE = 7.5
STEPS = 8
LATENT_SEED = 1234
UNET_T = 901.0
IMG2IMG_STRENGTH = 0.6
IMG2IMG_NOISE_SEED = 99

VERSIONS = {
    "torch": torch.__version__,
    "diffusers": diffusers.__version__,
    "transformers": transformers.__version__,
    "python": sys.version.split()[0],
}

# Scaled-linear betas shared by SD 1.5 and SD 2.1.
SD_BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


# --------------------------------------------------------------------------- tokenizer
def bytes_to_unicode():
    """CLIP's / GPT-2's reversible byte -> unicode table (openai/CLIP simple_tokenizer.py)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def find_bpe_file(explicit):
    if explicit:
        return Path(explicit)
    tmp = Path(tempfile.mkdtemp(prefix="clipbpe"))
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "open_clip_torch==3.3.0", "-d", str(tmp)],
        check=True,
    )
    whl = next(tmp.glob("open_clip_torch-*.whl"))
    with zipfile.ZipFile(whl) as z:
        z.extract("open_clip/bpe_simple_vocab_16e6.txt.gz", tmp)
    return tmp / "open_clip" / "bpe_simple_vocab_16e6.txt.gz"


def load_merges(bpe_path):
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    # Line 0 is the version header ('"bpe_simple_vocab_16e6.txt#version: 0.2'); CLIP skips it.
    merges = [tuple(m.split()) for m in lines[1 : 1 + NUM_MERGES]]
    assert all(len(m) == 2 for m in merges)
    return merges


def build_vocab(merges):
    v = list(bytes_to_unicode().values())
    v = v + [x + "</w>" for x in v]
    for m in merges:
        v.append("".join(m))
    v.extend(["<|startoftext|>", "<|endoftext|>"])
    assert len(set(v)) == len(v)
    return {tok: i for i, tok in enumerate(v)}


def write_tokenizer_files(folder, vocab, merges):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )


class ReferenceClipBpe:
    """Independent re-implementation of openai/CLIP's SimpleTokenizer (minus ftfy/html
    clean-up), used only to cross-check the transformers tokenizer on our prompts."""

    PAT = regex.compile(
        r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
        regex.IGNORECASE,
    )

    def __init__(self, vocab, merges):
        self.encoder = vocab
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.byte_encoder = bytes_to_unicode()

    def bpe(self, token):
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            bigram = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if bigram not in self.ranks:
                break
            first, second = bigram
            new, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    new.append(first + second)
                    i += 2
                else:
                    new.append(word[i])
                    i += 1
            word = tuple(new)
        return word

    def encode_plain(self, text):
        import unicodedata

        text = unicodedata.normalize("NFC", text)
        text = regex.sub(r"\s+", " ", text).strip().lower()
        ids = []
        for tok in regex.findall(self.PAT, text):
            tok = "".join(self.byte_encoder[b] for b in tok.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(tok))
        return ids

    def encode(self, text, specials=("<|startoftext|>", "<|endoftext|>")):
        """transformers semantics: special tokens (incl. the pad token, e.g. SD 2's "!")
        are cut out of the raw text first and map straight to their vocab id."""
        ids = [self.encoder["<|startoftext|>"]]
        pieces = regex.split("(" + "|".join(regex.escape(s) for s in specials) + ")", text)
        for piece in pieces:
            if piece in specials:
                ids.append(self.encoder[piece])
            elif piece:
                ids.extend(self.encode_plain(piece))
        ids.append(self.encoder["<|endoftext|>"])
        return ids


def make_tokenizer(vocab, merges, pad_token):
    """Write vocab.json/merges.txt, load them with transformers' CLIPTokenizer and
    save_pretrained (tokenizer_config.json, special_tokens_map.json, ...)."""
    src = Path(tempfile.mkdtemp(prefix="tok"))
    write_tokenizer_files(src, vocab, merges)
    # transformers 5: CLIPTokenizer is tokenizers-backed; from_pretrained on a folder with
    # vocab.json + merges.txt is the supported equivalent of CLIPTokenizer(vocab_file, merges_file).
    tok = CLIPTokenizer.from_pretrained(str(src), pad_token=pad_token, model_max_length=77)
    assert tok.pad_token == pad_token and tok.pad_token_id == vocab[pad_token], (tok.pad_token, tok.pad_token_id)
    assert tok.bos_token_id == vocab["<|startoftext|>"] and tok.eos_token_id == vocab["<|endoftext|>"]
    return tok


def ensure_tokenizer_layout(folder, vocab, merges):
    """The hub SD repos ship vocab.json + merges.txt; transformers 5 may only write
    tokenizer.json.  Write the classic files (identical content) if missing."""
    written = []
    for name in ("vocab.json", "merges.txt"):
        if not (folder / name).exists():
            written.append(name)
    if written:
        src = Path(tempfile.mkdtemp(prefix="tok"))
        write_tokenizer_files(src, vocab, merges)
        for name in written:
            shutil.copy(src / name, folder / name)
    # transformers 5 no longer writes special_tokens_map.json; write the hub's SD layout.
    if not (folder / "special_tokens_map.json").exists():
        cfg = json.loads((folder / "tokenizer_config.json").read_text())
        tokd = lambda c: {"content": c, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}
        stm = {"bos_token": tokd(cfg["bos_token"]), "eos_token": tokd(cfg["eos_token"]),
               "pad_token": cfg["pad_token"], "unk_token": tokd(cfg["unk_token"])}
        (folder / "special_tokens_map.json").write_text(json.dumps(stm, indent=2) + "\n")
        written.append("special_tokens_map.json")
    # transformers must read back exactly what we wrote.
    assert json.loads((folder / "vocab.json").read_text(encoding="utf-8")) == vocab
    return written


# --------------------------------------------------------------------------- models
def build_unet(kind):
    torch.manual_seed(0)
    common = dict(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, norm_num_groups=32,
    )
    if kind == "sd15":
        return UNet2DConditionModel(**common, attention_head_dim=8, use_linear_projection=False)
    return UNet2DConditionModel(**common, attention_head_dim=[2, 4], use_linear_projection=True, upcast_attention=True)


def build_vae():
    torch.manual_seed(1)
    return AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(32, 32, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4, layers_per_block=1, norm_num_groups=32, sample_size=64, scaling_factor=0.18215,
    )


def build_text_encoder(kind, vocab, pad_id):
    torch.manual_seed(2)
    cfg = CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=37,
        num_hidden_layers=2 if kind == "sd15" else 3, num_attention_heads=4, max_position_embeddings=77,
        hidden_act="quick_gelu" if kind == "sd15" else "gelu",
        bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"], pad_token_id=pad_id,
    )
    te = CLIPTextModel(cfg)
    if kind == "sd2":
        # SD 2 uses the penultimate layer of OpenCLIP-H: the hub text_encoder folder
        # simply has the last layer removed (final_layer_norm still applied).
        # (transformers 5 flattened CLIPTextModel: no `.text_model` submodule any more.)
        inner = getattr(te, "text_model", te)
        inner.encoder.layers = torch.nn.ModuleList(list(inner.encoder.layers)[:2])
        te.config.num_hidden_layers = 2
    return te.eval()


def build_scheduler(kind):
    """The hub scheduler_config.json files, key for key.  Built with from_config so that keys
    the class does not take (PNDM's clip_sample, DDIM's skip_prk_steps) are kept in the saved
    config exactly as in the hub files: SD 1.5's PNDM config carries "clip_sample": false,
    which DDIMScheduler.from_config(...) then picks up (without it DDIM would default to
    clip_sample=True and clip x0 to [-1, 1])."""
    if kind == "sd15":
        return PNDMScheduler.from_config(dict(
            **SD_BETAS, set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1, clip_sample=False,
            prediction_type="epsilon", timestep_spacing="leading", trained_betas=None,
        ))
    return DDIMScheduler.from_config(dict(
        **SD_BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1, skip_prk_steps=True,
        prediction_type="v_prediction", timestep_spacing="leading", trained_betas=None,
    ))


def fix_init(pipe):
    """Hook for weight rescaling if default init ever gives degenerate images.

    With diffusers 0.42.1 / transformers 5.24.0 / torch 2.15 default init (seeds 0/1/2 for
    UNet/VAE/text encoder) NO rescaling is needed: decoded images span [0, 1] with std ~0.15
    and <1% of pixels clamped, UNet output std ~0.33, and the images clearly depend on the
    UNet (sd15 vs sd2 images differ by ~0.12 mean abs) and on the latents (image 0 vs 1
    differ by ~0.16).  `check_not_degenerate` aborts the run if that ever changes; then
    rescale here (e.g. pipe.vae.decoder.conv_out.weight.mul_(k)) and record it.

    Returns the list of applied fixes, recorded in the reference json."""
    return []


# --------------------------------------------------------------------------- helpers
def clean_config(cfg):
    """Scheduler config as a plain dict; diffusers builds `_use_default_values` from a set,
    so sort it to keep the json byte-stable between runs."""
    cfg = dict(cfg)
    if "_use_default_values" in cfg:
        cfg["_use_default_values"] = sorted(cfg["_use_default_values"])
    return cfg


def stats(name, x):
    x = torch.as_tensor(x, dtype=torch.float32)
    s = dict(
        min=float(x.min()), max=float(x.max()), mean=float(x.mean()), std=float(x.std()),
        frac_at_0=float((x <= 1e-6).float().mean()), frac_at_1=float((x >= 1 - 1e-6).float().mean()),
    )
    print(f"  {name:28s} min={s['min']:.4f} max={s['max']:.4f} mean={s['mean']:.4f} std={s['std']:.4f} "
          f"at0={s['frac_at_0']:.3f} at1={s['frac_at_1']:.3f}")
    return s


def check_not_degenerate(name, img):
    s = stats(name, img)
    ok = s["max"] - s["min"] > 0.4 and s["std"] > 0.04 and s["frac_at_0"] + s["frac_at_1"] < 0.25
    if not ok:
        raise SystemExit(f"degenerate image {name}: {s}")
    return s


def make_init_image(path):
    """Deterministic 64x64 RGB: smooth colour gradient with a yellow disc."""
    y, x = np.mgrid[0:64, 0:64].astype(np.float64)
    r = 40 + 180 * x / 63
    g = 60 + 150 * y / 63
    b = 200 - 120 * (x + y) / 126
    disc = (x - 38) ** 2 + (y - 26) ** 2 <= 14**2
    r[disc], g[disc], b[disc] = 235, 205, 50
    img = np.stack([r, g, b], -1).round().clip(0, 255).astype(np.uint8)
    Image.fromarray(img, "RGB").save(path, optimize=False)
    return path


def cfg_loop(pipe, scheduler, latents, timesteps, ctx):
    """The text-to-image / img2img denoising loop, written out (what the pipeline does)."""
    for t in timesteps:
        inp = scheduler.scale_model_input(torch.cat([latents] * 2), t)
        noise = pipe.unet(inp, t, encoder_hidden_states=ctx).sample
        uncond, cond = noise.chunk(2)
        noise = uncond + GUIDANCE * (cond - uncond)
        latents = scheduler.step(noise, t, latents).prev_sample
    return latents


def decode(pipe, latents):
    x = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    return (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).contiguous()


def to_u8(img):
    return (img * 255).round().to(torch.uint8)


def tokenize(tok, text, pad=True):
    if pad:
        return tok(text, padding="max_length", max_length=77, truncation=True).input_ids
    return tok(text).input_ids


# --------------------------------------------------------------------------- main
SCHEDULERS = {
    "ddim": (DDIMScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "dpmpp_2m_karras": (
        DPMSolverMultistepScheduler,
        dict(use_karras_sigmas=True, algorithm_type="dpmsolver++", solver_order=2),
    ),
}


def build_model(kind, name, vocab, merges):
    out = MODELS / name
    if out.exists():
        shutil.rmtree(out)
    pad_token = "<|endoftext|>" if kind == "sd15" else "!"
    tok = make_tokenizer(vocab, merges, pad_token)
    pipe = StableDiffusionPipeline(
        vae=build_vae(), text_encoder=build_text_encoder(kind, vocab, vocab[pad_token]), tokenizer=tok,
        unet=build_unet(kind), scheduler=build_scheduler(kind),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    fixes = fix_init(pipe)
    pipe.save_pretrained(out, safe_serialization=True)
    written = ensure_tokenizer_layout(out / "tokenizer", vocab, merges)
    return fixes, written


def generate_reference(kind, name, latents, fixes, tok_written):
    print(f"== {name}")
    folder = MODELS / name
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    for m in (pipe.unet, pipe.vae, pipe.text_encoder):
        m.eval()
        assert next(m.parameters()).dtype == torch.float32
    tok = pipe.tokenizer
    te_keys = list(load_file(folder / "text_encoder" / "model.safetensors").keys())
    te_prefix = all(k.startswith("text_model.") for k in te_keys)
    t: dict[str, torch.Tensor] = {}
    meta: dict = {}

    with torch.no_grad():
        # ---- tokens and text embeddings
        ids_c = torch.tensor([tokenize(tok, PROMPT)], dtype=torch.int64)
        ids_u = torch.tensor([tokenize(tok, NEGATIVE)], dtype=torch.int64)
        t["input_ids_cond"], t["input_ids_uncond"] = ids_c, ids_u
        t["text_cond"] = pipe.text_encoder(ids_c)[0].float()
        t["text_uncond"] = pipe.text_encoder(ids_u)[0].float()
        pe, ne = pipe.encode_prompt(PROMPT, "cpu", 1, True, negative_prompt=NEGATIVE)
        assert torch.equal(pe, t["text_cond"]) and torch.equal(ne, t["text_uncond"]), "encode_prompt mismatch"

        # ---- one UNet forward
        ctx = torch.cat([t["text_uncond"]] * 2 + [t["text_cond"]] * 2)
        t["unet_in"] = torch.cat([latents, latents]).clone()
        t["unet_t"] = torch.tensor([UNET_T], dtype=torch.float32)
        t["unet_ctx"] = ctx
        t["unet_out"] = pipe.unet(t["unet_in"], t["unet_t"], encoder_hidden_states=ctx).sample
        u = stats("unet_out", t["unet_out"])
        if u["std"] < 0.05:
            raise SystemExit(f"UNet output ~0: {u}")
        meta["unet_out_stats"] = u

        # ---- text-to-image with the real pipeline, three schedulers
        meta["schedulers"] = {}
        meta["image_stats"] = {}
        base_cfg = pipe.scheduler.config
        for sname, (cls, extra) in SCHEDULERS.items():
            pipe.scheduler = cls.from_config(base_cfg, **extra)
            images = pipe(
                PROMPT, negative_prompt=NEGATIVE, latents=latents.clone(), num_inference_steps=STEPS,
                guidance_scale=GUIDANCE, height=HEIGHT, width=WIDTH, num_images_per_prompt=NUM_IMAGES,
                output_type="np",
            ).images
            img = torch.from_numpy(np.ascontiguousarray(images)).float()
            assert img.shape == (NUM_IMAGES, HEIGHT, WIDTH, 3)
            t[f"image_{sname}"] = img
            t[f"image_{sname}_u8"] = to_u8(img)
            meta["image_stats"][sname] = check_not_degenerate(f"image_{sname}", img)
            sch = cls.from_config(base_cfg, **extra)
            sch.set_timesteps(STEPS)
            t[f"timesteps_{sname}"] = sch.timesteps.float()
            entry = {
                "class": cls.__name__,
                "from_config_overrides": extra,
                "timesteps": [float(x) for x in sch.timesteps],
                "init_noise_sigma": float(sch.init_noise_sigma),
                "config": clean_config(sch.config),
            }
            if getattr(sch, "sigmas", None) is not None:
                t[f"sigmas_{sname}"] = sch.sigmas.float()
                entry["sigmas"] = [float(x) for x in sch.sigmas]
            meta["schedulers"][sname] = entry
            print(f"  {sname}: timesteps={entry['timesteps']}" + (
                f" sigmas={[round(s, 5) for s in entry.get('sigmas', [])]}" if "sigmas" in entry else ""))

        # ---- cross-check: our written-out loop == pipeline (DDIM text-to-image)
        sch = DDIMScheduler.from_config(base_cfg)
        sch.set_timesteps(STEPS)
        lat = latents.clone() * sch.init_noise_sigma
        lat = cfg_loop(pipe, sch, lat, sch.timesteps, ctx)
        loop_img = decode(pipe, lat)
        diff = float((loop_img - t["image_ddim"]).abs().max())
        print(f"  step-by-step DDIM loop vs pipeline: max|diff|={diff:.3g}")
        assert diff <= 1e-5, diff
        meta["loop_vs_pipeline_ddim_max_abs_diff"] = diff

        # ---- image-to-image, step by step (Euler, strength 0.6)
        png = np.asarray(Image.open(REF / "init_64.png").convert("RGB"))
        image = torch.from_numpy(png.copy()).float().div(255).mul(2).sub(1).permute(2, 0, 1)[None]
        init = pipe.vae.encode(image).latent_dist.mean * pipe.vae.config.scaling_factor
        init = init.repeat(NUM_IMAGES, 1, 1, 1)
        sch = EulerDiscreteScheduler.from_config(base_cfg)
        sch.set_timesteps(STEPS)
        init_timestep = min(int(STEPS * IMG2IMG_STRENGTH), STEPS)
        t_start = STEPS - init_timestep
        timesteps = sch.timesteps[t_start * sch.order :]
        sch.set_begin_index(t_start * sch.order)
        noise = torch.randn([NUM_IMAGES, 4, 8, 8], generator=torch.Generator().manual_seed(IMG2IMG_NOISE_SEED))
        lat = sch.add_noise(init, noise, timesteps[:1])
        lat = cfg_loop(pipe, sch, lat, timesteps, ctx)
        img = decode(pipe, lat)
        t["img2img_noise"] = noise
        t["img2img_init_latents"] = init
        t["img2img_timesteps"] = timesteps.float()
        t["image_img2img"] = img
        t["image_img2img_u8"] = to_u8(img)
        meta["image_stats"]["img2img"] = check_not_degenerate("image_img2img", img)
        meta["img2img"] = {
            "scheduler": "EulerDiscreteScheduler.from_config(model scheduler config)",
            "strength": IMG2IMG_STRENGTH, "t_start": t_start, "init_timestep": init_timestep,
            "timesteps": [float(x) for x in timesteps],
            "sigma_start": float(sch.sigmas[t_start]),
            "init_image": "assets/reference/init_64.png (RGB u8 -> /255*2-1)",
            "init_latents": "vae.encode(image).latent_dist.mean * scaling_factor, repeated per image",
            "noise": f"torch.randn([{NUM_IMAGES},4,8,8], generator=torch.Generator().manual_seed({IMG2IMG_NOISE_SEED}))",
            "noised": "scheduler.add_noise(init_latents, noise, timesteps[:1]) after set_begin_index(t_start)",
        }

    t = {k: v.contiguous() for k, v in t.items()}
    for k, v in t.items():
        assert v.dtype in (torch.float32, torch.int64, torch.uint8), (k, v.dtype)
    save_file(t, REF / f"{name}.safetensors")

    meta = {
        "model": f"assets/models/{name}",
        "kind": kind,
        "versions": VERSIONS,
        "prompt": PROMPT,
        "negative_prompt": NEGATIVE,
        "width": WIDTH, "height": HEIGHT, "num_images": NUM_IMAGES,
        "guidance_scale": GUIDANCE, "num_inference_steps": STEPS,
        "latents": f"assets/reference/latents_2x4x8x8.safetensors = torch.randn([2,4,8,8], generator=torch.Generator().manual_seed({LATENT_SEED}))",
        "unet_t": UNET_T,
        "unet_call": "unet(unet_in, unet_t, encoder_hidden_states=unet_ctx).sample; unet_ctx = cat([text_uncond, text_uncond, text_cond, text_cond])",
        "pipeline_call": "pipe(prompt, negative_prompt=..., latents=latents.clone(), num_inference_steps=8, guidance_scale=7.5, height=64, width=64, num_images_per_prompt=2, output_type='np')",
        "u8_rule": "(image*255).round() as uint8",
        "pad_token": tok.pad_token, "pad_token_id": tok.pad_token_id,
        "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
        "vocab_size": len(tok),
        "text_encoder_keys_have_text_model_prefix": te_prefix,
        "tokenizer_files": sorted(p.name for p in (folder / "tokenizer").iterdir()),
        "tokenizer_files_written_by_script": tok_written,
        "weight_init_fixes": fixes,
        "model_scheduler_config": clean_config(base_cfg),
        "tensors": {k: {"dtype": str(v.dtype).replace("torch.", ""), "shape": list(v.shape)} for k, v in t.items()},
        **meta,
    }
    (REF / f"{name}.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return pipe.tokenizer


TOKEN_PROMPTS = [
    "a brown puppy on the beach",
    "a cat, wearing a hat!",
    "A PHOTO OF AN ASTRONAUT Riding A Horse",
    "  two   spaces ",
    "photo 1024x768",
    "it's the dog's toy",
    "café crème",
    "",
    "blurry, low quality",
    "hello...world?! (masterpiece:1.2) [tag] <lora> #42 $5 @user",
    " ".join(
        ("a highly detailed oil painting of a quiet harbour town at dusk with fishing boats lanterns "
         "reflections on calm water seagulls distant mountains soft clouds warm light cobblestone streets "
         "old stone houses flower boxes a small church tower people walking dogs children playing "
         "market stalls with fruit and bread cats sleeping on steps painted doors ivy on walls "
         "wooden piers ropes nets barrels a lighthouse blinking far away stars appearing one by one "
         "in a violet sky trending on artstation by a famous painter with dramatic composition "
         "and rich colours ultra sharp focus eight k resolution cinematic lighting volumetric fog "
         "golden hour glow gentle breeze").split()[:120]
    ),
]


def make_tokens_json(toks, vocab, merges):
    ref = ReferenceClipBpe(vocab, merges)
    out = {"versions": VERSIONS, "num_merges": NUM_MERGES, "vocab_size": len(vocab),
           "call": "tokenizer(prompt, padding='max_length', max_length=77, truncation=True).input_ids; untruncated = tokenizer(prompt).input_ids",
           "tokenizers": {}}
    mismatches, notes = [], []
    for name, tok in toks.items():
        entries = []
        for p in TOKEN_PROMPTS:
            full = tokenize(tok, p, pad=False)
            padded = tokenize(tok, p, pad=True)
            specials = ("<|startoftext|>", "<|endoftext|>", tok.pad_token)
            if full != ref.encode(p, specials):
                mismatches.append((name, p, full, ref.encode(p, specials)))
            plain = ref.encode(p, ("<|startoftext|>", "<|endoftext|>"))
            if full != plain:
                notes.append({"tokenizer": name, "prompt": p, "ids_if_pad_token_were_not_special": plain})
            entries.append({"prompt": p, "input_ids": padded, "untruncated_ids": full})
        out["tokenizers"][name] = {
            "folder": f"assets/models/{name}/tokenizer", "pad_token": tok.pad_token,
            "pad_token_id": tok.pad_token_id, "prompts": entries,
        }
    # The hub layout without tokenizer.json (vocab.json + merges.txt + configs) must give the same ids.
    for name, tok in toks.items():
        tmp = Path(tempfile.mkdtemp(prefix="tokcheck"))
        for f in (MODELS / name / "tokenizer").iterdir():
            if f.name != "tokenizer.json":
                shutil.copy(f, tmp / f.name)
        classic = CLIPTokenizer.from_pretrained(str(tmp))
        assert classic.pad_token == tok.pad_token, (classic.pad_token, tok.pad_token)
        for p in TOKEN_PROMPTS:
            assert tokenize(classic, p) == tokenize(tok, p), (name, p)
            assert tokenize(classic, p, pad=False) == tokenize(tok, p, pad=False), (name, p)
    out["classic_files_without_tokenizer_json_give_same_ids"] = True
    out["matches_reference_clip_bpe_reimplementation"] = not mismatches
    out["note_pad_token_is_special"] = (
        "transformers registers the pad token as a special token and splits it out of the raw text "
        "before BPE. For SD 2 (pad '!') a '!' in the prompt therefore becomes id 0 ('!'), never the BPE "
        "token '!</w>' (256) nor part of a punctuation run like '?!'. Entries below show the ids plain "
        "CLIP BPE would give instead.")
    out["pad_token_special_differences"] = notes
    if mismatches:
        print("WARNING: transformers tokenizer differs from CLIP reference BPE:")
        for m in mismatches:
            print("  ", m)
    (REF / "tokens.json").write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bpe", help="path to bpe_simple_vocab_16e6.txt.gz (default: pip download open_clip_torch)")
    args = ap.parse_args()
    print("versions:", VERSIONS)

    merges = load_merges(find_bpe_file(args.bpe))
    vocab = build_vocab(merges)
    REF.mkdir(parents=True, exist_ok=True)
    MODELS.mkdir(parents=True, exist_ok=True)

    latents = torch.randn([2, 4, 8, 8], generator=torch.Generator().manual_seed(LATENT_SEED))
    save_file({"latents": latents.contiguous()}, REF / "latents_2x4x8x8.safetensors")
    make_init_image(REF / "init_64.png")

    toks = {}
    for kind, name in (("sd15", "tiny-sd15"), ("sd2", "tiny-sd2-v")):
        fixes, written = build_model(kind, name, vocab, merges)
        toks[name] = generate_reference(kind, name, latents, fixes, written)
    make_tokens_json(toks, vocab, merges)
    print("done")


if __name__ == "__main__":
    main()
