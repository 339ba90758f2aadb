#!/usr/bin/env python3
"""One peer's grid job (4 images, 1 step, guidance 0) in a process of its own, for
``tools/bench_compare.py --process``.

The parent times this whole process (interpreter start, imports, model load, the job, PNGs
written, exit) and reads its peak RSS from ``wait4``; this script reports, as one JSON line on
stdout, how long loading and the job itself took inside it.

Engines:
  diffusers        ``StableDiffusionPipeline`` / ``StableDiffusionXLPipeline`` on a diffusers folder
                   (fp32, or bf16 under CPU autocast)
  openvino         ``OVStableDiffusionPipeline`` / ``OVStableDiffusionXLPipeline`` (optimum-intel) on
                   an OpenVINO IR folder made by ``openvino-export``, reshaped to the job's image
                   size (batch left dynamic) and compiled for the CPU (inference precision f32
                   or bf16)
  openvino-export  exports a diffusers folder to IR with ``from_pretrained(folder, export=True)``
                   (the same values; no 8-bit weight compression), once, not timed as a job

``--runs N`` times the job N more times after the first and reports their median as
``generation_s`` (what ``imagine bench``'s grid row measures); with ``--runs 0`` the first,
cold job is the one reported.

Run by hand, never in CI (see tools/bench_compare.py).
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

PROMPT = "a photograph of an astronaut riding a horse on the moon, highly detailed"


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("engine", choices=["diffusers", "openvino", "openvino-export"])
    ap.add_argument("--model", type=Path, required=True, help="diffusers folder, or IR folder for openvino")
    ap.add_argument("--ir", type=Path, help="openvino-export: where to write the IR folder")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--keep-denormals", action="store_true")
    ap.add_argument("--runs", type=int, default=0)
    ap.add_argument("--out", type=Path, help="folder for the four PNGs")
    return ap.parse_args()


def is_xl(folder):
    return "text_encoder_2" in json.loads((folder / "model_index.json").read_text())


def job(pipe, size):
    import torch

    return pipe(
        PROMPT, height=size, width=size, num_inference_steps=1, guidance_scale=0.0,
        num_images_per_prompt=4, generator=torch.Generator().manual_seed(1), output_type="pil",
    ).images


def diffusers_pipe(args):
    import torch
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    torch.set_num_threads(args.threads)
    if not args.keep_denormals and not torch.set_flush_denormal(True):
        sys.exit("torch cannot flush denormals on this CPU")
    if is_xl(args.model):
        pipe = StableDiffusionXLPipeline.from_pretrained(str(args.model), torch_dtype=torch.float32)
    else:
        pipe = StableDiffusionPipeline.from_pretrained(
            str(args.model), torch_dtype=torch.float32, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16")

    def run():
        with torch.inference_mode(), autocast:
            return job(pipe, args.size)

    return run


def ov_config(args):
    return {
        "INFERENCE_NUM_THREADS": str(args.threads),
        "INFERENCE_PRECISION_HINT": "f32" if args.precision == "fp32" else "bf16",
        "PERFORMANCE_HINT": "LATENCY",
        "CPU_DENORMALS_OPTIMIZATION": "NO" if args.keep_denormals else "YES",
        "CACHE_DIR": "",
    }


def openvino_pipe(args):
    from optimum.intel import OVStableDiffusionPipeline, OVStableDiffusionXLPipeline

    cls = OVStableDiffusionXLPipeline if is_xl(args.model) else OVStableDiffusionPipeline
    pipe = cls.from_pretrained(str(args.model), compile=False, ov_config=ov_config(args))
    # Static image size, dynamic batch: optimum's static batch assumes guidance > 1 (a doubled
    # UNet batch), which a guidance-0 job does not run.
    pipe.reshape(batch_size=-1, height=args.size, width=args.size, num_images_per_prompt=-1)
    pipe.compile()
    pipe.set_progress_bar_config(disable=True)
    return lambda: job(pipe, args.size)


def openvino_export(args):
    from optimum.intel import OVStableDiffusionPipeline, OVStableDiffusionXLPipeline

    cls = OVStableDiffusionXLPipeline if is_xl(args.model) else OVStableDiffusionPipeline
    start = time.perf_counter()
    # load_in_8bit=False: optimum-intel compresses weights of models over 1B parameters to
    # 8 bits by default; the comparison is at the model's own precision.
    pipe = cls.from_pretrained(str(args.model), export=True, compile=False, load_in_8bit=False)
    pipe.save_pretrained(str(args.ir))
    print(json.dumps({"engine": "openvino-export", "export_s": time.perf_counter() - start}))


def main():
    args = parse_args()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    if args.engine == "openvino-export":
        return openvino_export(args)
    start = time.perf_counter()
    run = diffusers_pipe(args) if args.engine == "diffusers" else openvino_pipe(args)
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    images = run()
    times = [time.perf_counter() - start]
    for _ in range(args.runs):
        start = time.perf_counter()
        images = run()
        times.append(time.perf_counter() - start)
    assert len(images) == 4
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(images):
            img.save(args.out / f"{args.engine}-{i}.png")
    print(json.dumps({
        "engine": args.engine,
        "precision": args.precision,
        "size": args.size,
        "load_s": load_s,
        "first_job_s": times[0],
        "generation_s": statistics.median(times[1:]) if args.runs else times[0],
        "all_job_s": times,
    }))


if __name__ == "__main__":
    main()
