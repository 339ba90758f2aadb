#!/usr/bin/env python3
"""Side-by-side timings: `imagine bench` against diffusers on the same model folder.

Runs ``imagine bench --model DIR --json ...`` first (as a subprocess, alone on the CPU),
then loads the same folder with diffusers' ``StableDiffusionPipeline`` and times the same
rows at the same sizes, fp32 (and with ``--bf16`` also ``imagine --precision bf16`` against
diffusers under bf16 autocast), with the same thread count and the same denormal mode
(flush-to-zero on both sides unless ``--keep-denormals``), then prints one table with the
ratio ours / diffusers per row (below 1.0: we are faster).

Rows (names shared with ``imagine bench``):
  text    text encoder on a CFG pair (empty negative + prompt), batch 2, 77 tokens
  preview our per-step latent preview (diffusers has none: not compared)
  unet1   one UNet forward, batch 1, timestep 999
  vae     VAE decode of one latent
  unet4   one UNet forward, batch 4
  grid    the whole 2x2 job: 4 images, 1 step, guidance 0, decoded to PIL images

Peak RSS is measured the same way on both sides: the kernel's VmHWM is reset through
/proc/self/clear_refs at the start of each row and read at its end.

Peers beyond diffusers, and the whole process (tools/bench_process.py):
  --openvino-python PY  also runs OpenVINO through optimum-intel, in the interpreter PY (its own
                        venv: optimum-intel pins its own transformers): the folder is exported to
                        IR once (``--openvino-ir``, not timed), then the grid job is timed in a
                        process of its own (median of --runs after a first job)
  --process             the grid job as a user runs it, once per engine and size, each in a fresh
                        process: ``imagine generate --grid`` against the peers' scripts; wall
                        time from exec to exit (imports, model load, the job, PNGs written) and
                        the process's peak RSS (GNU time's %M; needs /usr/bin/time)

Run by hand, never in CI (needs torch + diffusers; see tools/README.md):
    cargo build --release -p imagine
    .venv/bin/python tools/make_random_model.py --arch sd-turbo --out /tmp/sd-turbo-random
    .venv/bin/python tools/bench_compare.py --model /tmp/sd-turbo-random --sizes 512,256 --runs 3
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROMPT = "a photograph of an astronaut riding a horse on the moon, highly detailed"
ORDER = ["text", "preview", "unet1", "vae", "unet4", "grid"]


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--sizes", default="512,256")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--grid-runs", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default="", help="comma-separated rows (default: all)")
    ap.add_argument("--keep-denormals", action="store_true")
    ap.add_argument("--bf16", action="store_true",
                    help="also time imagine --precision bf16 against diffusers under bf16 autocast")
    ap.add_argument("--imagine", type=Path, default=REPO / "target" / "release" / "imagine")
    ap.add_argument("--imagine-json", type=Path, help="reuse this imagine bench JSON, skip running it")
    ap.add_argument("--imagine-bf16-json", type=Path, help="the same for --precision bf16")
    ap.add_argument("--out", type=Path, help="write both sides' results as JSON here")
    ap.add_argument("--openvino-python", type=Path,
                    help="a Python with optimum-intel[openvino]: add OpenVINO to the grid comparison")
    ap.add_argument("--openvino-ir", type=Path,
                    help="OpenVINO IR folder (exported from --model when missing; default /tmp/<model>-openvino-ir)")
    ap.add_argument("--process", action="store_true",
                    help="also time the grid job as a whole process per engine (see above)")
    return ap.parse_args()


def loadavg():
    return "load average %.2f %.2f %.2f" % os.getloadavg()


def run_imagine(args, sizes, only, precision):
    reuse = args.imagine_json if precision == "fp32" else args.imagine_bf16_json
    if reuse:
        return json.loads(reuse.read_text())
    out = Path(tempfile.mkdtemp()) / ("imagine-%s.json" % precision)
    cmd = [
        str(args.imagine), "bench", "--model", str(args.model),
        "--sizes", ",".join(map(str, sizes)), "--precision", precision,
        "--runs", str(args.runs), "--warmup", str(args.warmup), "--json", str(out),
    ]
    if args.grid_runs is not None:
        cmd += ["--grid-runs", str(args.grid_runs)]
    if only:
        cmd += ["--only", ",".join(only)]
    if args.keep_denormals:
        cmd.append("--keep-denormals")
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    print("$ RAYON_NUM_THREADS=%d %s" % (args.threads, " ".join(cmd)), flush=True)
    print("before imagine:", loadavg(), flush=True)
    subprocess.run(cmd, check=True, env=env)
    return json.loads(out.read_text())


def reset_peak_rss():
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mib():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return None


def time_row(fn, warmup, runs):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def diffusers_rows(args, sizes, only, precision):
    import torch
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    index = json.loads((Path(args.model) / "model_index.json").read_text())
    xl = "text_encoder_2" in index
    if xl:
        pipe = StableDiffusionXLPipeline.from_pretrained(str(args.model), torch_dtype=torch.float32)
    else:
        pipe = StableDiffusionPipeline.from_pretrained(
            str(args.model), torch_dtype=torch.float32, safety_checker=None
        )
    pipe.set_progress_bar_config(disable=True)
    tokenize = lambda tok: tok(
        ["", PROMPT], padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids
    ids = tokenize(pipe.tokenizer)
    ids2 = tokenize(pipe.tokenizer_2) if xl else None
    grid_runs = args.grid_runs if args.grid_runs is not None else args.runs
    autocast = (
        torch.autocast("cpu", dtype=torch.bfloat16)
        if precision == "bf16"
        else torch.autocast("cpu", enabled=False)
    )

    def latents(n, s):
        g = torch.Generator().manual_seed(0)
        return torch.randn((n, 4, s // 8, s // 8), generator=g)

    def encode_text():
        if not xl:
            return pipe.text_encoder(ids)[0]
        # SDXL: both encoders, penultimate states and the second's pooled projection.
        a = pipe.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
        b = pipe.text_encoder_2(ids2, output_hidden_states=True)
        return torch.cat([a, b.hidden_states[-2]], -1), b.text_embeds

    def added(batch, size):
        if not xl:
            return {}
        time_ids = torch.tensor([[size, size, 0, 0, size, size]] * batch, dtype=torch.float32)
        return {"added_cond_kwargs": {"text_embeds": pooled1.repeat(batch, 1), "time_ids": time_ids}}

    with torch.inference_mode():
        if xl:
            ctx_all, pooled_all = encode_text()
            ctx1, pooled1 = ctx_all[1:], pooled_all[1:]
        else:
            ctx1 = pipe.text_encoder(ids[1:])[0]
    results = []
    plan = [("text", None)] if "text" in only else []
    plan += [(r, s) for s in sizes for r in ORDER if r not in ("text", "preview") and r in only]
    for row, size in plan:
        if row == "text":
            batch, fn = 2, encode_text
        elif row in ("unet1", "unet4"):
            batch = 1 if row == "unet1" else 4
            x, ctx = latents(batch, size), ctx1.repeat(batch, 1, 1)
            kw = added(batch, size)
            fn = lambda x=x, ctx=ctx, kw=kw: pipe.unet(x, 999, encoder_hidden_states=ctx, **kw).sample
        elif row == "vae":
            batch, x = 1, latents(1, size)
            fn = lambda x=x: pipe.vae.decode(x / pipe.vae.config.scaling_factor).sample
        else:  # grid
            batch = 4

            def fn(size=size):
                out = pipe(
                    PROMPT,
                    height=size,
                    width=size,
                    num_inference_steps=1,
                    guidance_scale=0.0,
                    num_images_per_prompt=4,
                    generator=torch.Generator().manual_seed(1),
                    output_type="pil",
                ).images
                assert len(out) == 4

        print("diffusers %s %-7s %5s: " % (precision, row, size or "-"), end="", flush=True)
        reset_peak_rss()
        with torch.inference_mode(), autocast:
            warm, runs = (0, grid_runs) if row == "grid" else (args.warmup, args.runs)
            times = time_row(fn, warm, runs)
        print(" ".join("%.3fs" % t for t in times), flush=True)
        results.append({
            "row": row,
            "size": size,
            "batch": batch,
            "precision": precision,
            "seconds": statistics.median(times),
            "all_seconds": times,
            "peak_rss_mib": peak_rss_mib(),
        })
    return results


PROCESS_SCRIPT = REPO / "tools" / "bench_process.py"
TIME = "/usr/bin/time"  # GNU time (Debian's `time` package)


def whole_process(label, cmd, env=None):
    """Runs `cmd` to its end: wall seconds from exec to exit, its peak RSS, and the JSON line
    it printed last, if any.

    The peak comes from GNU time (`%M`, the command's own ru_maxrss): a child forked from this
    Python process would report this process's size as its floor, because Linux carries the
    forking image's high-water mark across exec into ru_maxrss. GNU time forks from its own
    small image."""
    print("$ %s" % " ".join(map(str, cmd)), flush=True)
    print("before %s:" % label, loadavg(), flush=True)
    with tempfile.NamedTemporaryFile("r", suffix=".maxrss") as maxrss:
        start = time.perf_counter()
        proc = subprocess.run([TIME, "-f", "%M", "-o", maxrss.name, *map(str, cmd)],
                              stdout=subprocess.PIPE, env=env, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            sys.exit("%s failed (exit %d):\n%s" % (label, proc.returncode, proc.stdout))
        peak_kib = int(maxrss.read().split()[-1])
    lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
    info = json.loads(lines[-1]) if lines else {}
    info.update({"process_s": wall, "process_peak_rss_mib": peak_kib / 1024.0})
    print("  %s: whole process %.1f s, peak RSS %.0f MiB" % (label, wall, info["process_peak_rss_mib"]),
          flush=True)
    return info


def openvino_ir(args):
    ir = args.openvino_ir or Path(tempfile.gettempdir()) / ("%s-openvino-ir" % Path(args.model).name)
    if not (ir / "model_index.json").exists():
        whole_process("openvino export", [args.openvino_python, PROCESS_SCRIPT, "openvino-export",
                                          "--model", args.model, "--ir", ir])
    return ir


def peer_rows(args, sizes, precision):
    """The grid job of each engine in processes of their own: generation (median of --runs
    after a first job) for OpenVINO, and with --process the whole process for every engine."""
    rows = []
    out_dir = Path(tempfile.mkdtemp(prefix="bench-process-"))
    common = lambda size: ["--size", size, "--threads", args.threads, "--precision", precision] + (
        ["--keep-denormals"] if args.keep_denormals else [])
    ir = openvino_ir(args) if args.openvino_python else None
    for size in sizes:
        if ir:
            info = whole_process("openvino grid %d" % size, [
                args.openvino_python, PROCESS_SCRIPT, "openvino", "--model", ir, "--runs", args.runs,
                *common(size)])
            rows.append({"engine": "openvino", "size": size, "precision": precision,
                         "generation_s": info["generation_s"], "load_s": info["load_s"]})
        if not args.process:
            continue
        env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
        cmd = [args.imagine, "generate", PROMPT, "--model", args.model, "--grid", "--steps", 1,
               "--guidance", 0, "--seed", 1, "--size", "%dx%d" % (size, size), "--precision", precision,
               "--out", out_dir / ("imagine-%d.png" % size)]
        info = whole_process("imagine generate %d" % size, cmd, env)
        rows.append({"engine": "imagine", "size": size, "precision": precision, **info})
        info = whole_process("diffusers grid %d" % size, [
            sys.executable, PROCESS_SCRIPT, "diffusers", "--model", args.model, "--runs", 0,
            "--out", out_dir, *common(size)])
        rows.append({"engine": "diffusers", "size": size, "precision": precision, **info})
        if ir:
            info = whole_process("openvino grid %d, whole process" % size, [
                args.openvino_python, PROCESS_SCRIPT, "openvino", "--model", ir, "--runs", 0,
                "--out", out_dir, *common(size)])
            row = next(r for r in rows if r["engine"] == "openvino" and r["size"] == size
                       and r["precision"] == precision)
            row.update({k: v for k, v in info.items() if k.startswith("process")})
    print("PNGs of the whole-process runs: %s" % out_dir)
    return rows


def print_grid_table(ours, theirs, peers, precision):
    """Generation and whole process of the grid job per engine, with ours / theirs ratios."""
    sizes = sorted({r["size"] for r in peers if r["precision"] == precision}, reverse=True)
    for size in sizes:
        gen = {"imagine": next((r["seconds"] for r in ours["rows"]
                                if r["row"] == "grid" and r["size"] == size), None),
               "diffusers": next((r["seconds"] for r in theirs if r["row"] == "grid"
                                  and r["size"] == size and r["precision"] == precision), None)}
        proc, rss = {}, {}
        for r in peers:
            if r["size"] == size and r["precision"] == precision:
                if "generation_s" in r and r["engine"] == "openvino":
                    gen["openvino"] = r["generation_s"]
                if "process_s" in r:
                    proc[r["engine"]] = r["process_s"]
                    rss[r["engine"]] = r["process_peak_rss_mib"]
        fmt = lambda v, p: "-" if v is None else "%.*f" % (p, v)
        print("\ngrid job at %d (4 images, 1 step, guidance 0), %s:" % (size, precision))
        head = "%-10s %12s %9s | %15s %9s | %13s" % (
            "engine", "generation s", "ratio", "whole process s", "ratio", "process MiB")
        print(head)
        print("-" * len(head))
        for engine in ("imagine", "diffusers", "openvino"):
            g, p = gen.get(engine), proc.get(engine)
            if g is None and p is None:
                continue
            gr = gen["imagine"] / g if g and gen.get("imagine") else None
            pr = proc["imagine"] / p if p and proc.get("imagine") else None
            print("%-10s %12s %9s | %15s %9s | %13s" % (
                engine, fmt(g, 2), fmt(gr, 2), fmt(p, 2), fmt(pr, 2), fmt(rss.get(engine), 0)))
        print("ratio = Imagine / that engine (below 1.0: Imagine is faster)")


def print_table(ours, theirs, precision):
    key = lambda r: (r["row"], r["size"])
    theirs = {key(r): r for r in theirs if r["precision"] == precision}
    fmt = lambda v, p: "-" if v is None else "%.*f" % (p, v)
    head = "%-8s %5s %5s | %9s %9s %7s | %9s %9s | %8s %8s" % (
        "row", "size", "batch", "ours s", "diff. s", "ratio", "ours GF/s", "diff GF/s",
        "ours MiB", "diff MiB")
    print("\n%s: imagine --precision %s against diffusers %s" % (
        precision, precision, "fp32" if precision == "fp32" else "under bf16 autocast"))
    print(head)
    print("-" * len(head))
    for r in ours["rows"]:
        t = theirs.get(key(r))
        ts = t["seconds"] if t else None
        gf = r.get("gflop")
        print("%-8s %5s %5d | %9.3f %9s %7s | %9s %9s | %8s %8s" % (
            r["row"], r["size"] or "-", r["batch"], r["seconds"], fmt(ts, 3),
            fmt(r["seconds"] / ts if ts else None, 2),
            fmt(r.get("gflops_per_s"), 1), fmt(gf / ts if gf and ts else None, 1),
            fmt(r.get("peak_rss_mib"), 0), fmt(t["peak_rss_mib"] if t else None, 0)))
    print("ratio = ours / diffusers (below 1.0: Imagine is faster); GF/s from the same "
          "analytic GFLOP on both sides; MiB = peak RSS during the row (VmHWM reset per row)")


def main():
    args = parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    only = [r for r in args.only.split(",") if r] or ORDER

    # Threads and denormal mode are fixed before torch starts any pool.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    print("start:", loadavg(), flush=True)
    ours = run_imagine(args, sizes, only, "fp32")
    ours_bf16 = run_imagine(args, sizes, only, "bf16") if args.bf16 else None

    import torch

    # Worker threads inherit the creating thread's MXCSR: set it before any parallel op.
    torch.set_num_threads(args.threads)
    flush = not args.keep_denormals
    if flush and not torch.set_flush_denormal(True):
        sys.exit("torch cannot flush denormals on this CPU")
    # A large elementwise op runs on every intra-op thread: a subnormal input must give 0.
    tiny = torch.full((1 << 22,), 1e-39) * 1.5
    if flush and bool(tiny.ne(0).any()):
        sys.exit("flush-to-zero is not set on every torch thread")

    import diffusers
    import transformers

    print("diffusers %s, transformers %s, torch %s: %d threads, flush denormals %s"
          % (diffusers.__version__, transformers.__version__, torch.__version__,
             torch.get_num_threads(), "ON" if flush else "off"), flush=True)
    print("before diffusers:", loadavg(), flush=True)
    theirs = diffusers_rows(args, sizes, only, "fp32")
    if args.bf16:
        theirs += diffusers_rows(args, sizes, only, "bf16")
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    peers = []
    if args.openvino_python or args.process:
        grid_sizes = sizes if "grid" in only else sizes[:1]
        peers = peer_rows(args, grid_sizes, "fp32")
        if args.bf16:
            peers += peer_rows(args, grid_sizes, "bf16")
    print("end:", loadavg())

    print("\nimagine: %d threads, flush-to-zero %s, warm-up %d, median of %d (grid: %d, "
          "no extra warm-up)" % (ours["threads"], "ON" if ours["flush_denormals"] else "off",
                                 ours["warmup"], ours["runs"], ours["grid_runs"]))
    print_table(ours, theirs, "fp32")
    if ours_bf16:
        print_table(ours_bf16, theirs, "bf16")
    if peers:
        print_grid_table(ours, theirs, peers, "fp32")
        if ours_bf16:
            print_grid_table(ours_bf16, theirs, peers, "bf16")
    print("diffusers process peak RSS (getrusage ru_maxrss, whole run): %.0f MiB" % maxrss)
    if args.out:
        args.out.write_text(json.dumps({
            "imagine": ours,
            "imagine_bf16": ours_bf16,
            "diffusers": theirs,
            "diffusers_ru_maxrss_mib": maxrss,
            "peers": peers,
            "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                         "transformers": transformers.__version__},
        }, indent=2))


if __name__ == "__main__":
    main()
