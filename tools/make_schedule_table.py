#!/usr/bin/env python3
"""Write assets/reference/schedules.json: the inference timesteps and sigmas diffusers computes.

Why: every sampler places its steps with numpy arithmetic (``np.arange`` with a float step,
``np.linspace``, half-to-even ``round``, float32 casts). A Rust port that is right for 8 steps
can still be wrong for 3 (trailing spacing once ran ``[999, 666, 332, -1]`` where diffusers runs
three steps). This table is what the engine's ``tests/schedules.rs`` compares against, for
every step count from 1 to ``--max-steps``.

What it holds: for each sampler (by the engine's CLI names, plus ``euler`` with Karras sigmas)
and each spacing (linspace, leading, trailing with ``steps_offset`` 1, and leading with
``steps_offset`` 0), the ``timesteps`` diffusers' scheduler sets for each step count and, for
the samplers that step in sigma, its ``sigmas`` (float32, the final 0 included), on Stable
Diffusion's noise schedule (scaled_linear betas 0.00085..0.012, 1000 training steps).
LCM reads neither spacing nor offset (its steps come from the 50-step distillation schedule),
so its four entries must agree; two more LCM entries cover image-to-image ``strength`` 0.6 and
``original_inference_steps`` 30, where some step counts are refused: those hold ``null``.
Numbers are written in the shortest form that reads back to the same float32.

Run by hand only, never in CI (needs torch, numpy and diffusers; takes seconds):

    .venv/bin/python tools/make_schedule_table.py
    .venv/bin/python tools/make_schedule_table.py --max-steps 1000 --out /tmp/schedules.json
"""

import argparse
import json
from pathlib import Path

import diffusers
import numpy as np
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
)

ROOT = Path(__file__).resolve().parent.parent

# Stable Diffusion 1.x / 2.x / Turbo noise schedule.
SD = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
)

# (engine sampler name, diffusers class, extra config, whether the sampler steps in sigma)
SAMPLERS = [
    ("euler", EulerDiscreteScheduler, {}, True),
    ("euler-karras", EulerDiscreteScheduler, {"use_karras_sigmas": True}, True),
    ("euler-a", EulerAncestralDiscreteScheduler, {}, True),
    # SD 2.1's DDIM settings.
    ("ddim", DDIMScheduler, {"clip_sample": False, "set_alpha_to_one": False}, False),
    ("dpmpp-2m", DPMSolverMultistepScheduler, {}, True),
    ("dpmpp-2m-karras", DPMSolverMultistepScheduler, {"use_karras_sigmas": True}, True),
    # LCM_Dreamshaper_v7's settings.
    ("lcm", LCMScheduler, {"original_inference_steps": 50, "timestep_scaling": 10.0}, False),
]

# LCM settings that change its timesteps: (extra config, strength). Counts diffusers refuses
# (more steps than the shortened distillation schedule holds) are written as null.
LCM_EXTRA = [({"original_inference_steps": 50}, 0.6), ({"original_inference_steps": 30}, 1.0)]

# steps_offset only moves leading spacing, so offset 0 is checked there alone.
SPACINGS = [("linspace", 1), ("leading", 1), ("trailing", 1), ("leading", 0)]


def f32(values):
    """Shortest decimal that reads back to the same float32, as a JSON number."""
    out = []
    for v in np.asarray(values, dtype=np.float32).tolist():
        short = float(str(np.float32(v)))
        out.append(int(short) if short.is_integer() else short)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--max-steps", type=int, default=50)
    ap.add_argument("--out", type=Path, default=ROOT / "assets/reference/schedules.json")
    args = ap.parse_args()

    schedules = []
    for name, cls, extra, has_sigmas in SAMPLERS:
        for spacing, offset in SPACINGS:
            cfg = dict(SD, timestep_spacing=spacing, steps_offset=offset, **extra)
            sched = cls(**cfg)
            timesteps, sigmas = [], []
            for n in range(1, args.max_steps + 1):
                sched.set_timesteps(n)
                timesteps.append(f32(sched.timesteps.numpy()))
                if has_sigmas:
                    sigmas.append(f32(sched.sigmas.numpy()))
            entry = {"sampler": name, "config": cfg, "timesteps": timesteps}
            if has_sigmas:
                entry["sigmas"] = sigmas
            schedules.append(entry)

    for extra, strength in LCM_EXTRA:
        cfg = dict(SD, timestep_spacing="leading", steps_offset=1, **extra)
        sched = LCMScheduler(**cfg)
        timesteps = []
        for n in range(1, args.max_steps + 1):
            try:
                sched.set_timesteps(n, strength=strength)
                timesteps.append(f32(sched.timesteps.numpy()))
            except ValueError:
                timesteps.append(None)
        schedules.append({"sampler": "lcm", "config": cfg, "strength": strength, "timesteps": timesteps})

    table = {
        "made_by": "tools/make_schedule_table.py",
        "versions": {
            "diffusers": diffusers.__version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
        },
        "max_steps": args.max_steps,
        "schedules": schedules,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(table, separators=(",", ":")) + "\n")
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
