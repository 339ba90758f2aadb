#!/usr/bin/env python3
"""torch's scaled_dot_product_attention at the shapes of engine/examples/attention_rate.rs,
fp32, in GFLOP/s (4·Sq·Sk·width per call) per thread-second of CPU time (process time over
the thread count, as the Rust example reports), for a side-by-side with our kernel.

    RUNS=3 .venv/bin/python tools/attention_rate.py --threads 2
"""
import argparse
import os
import time

ap = argparse.ArgumentParser()
ap.add_argument("--threads", type=int, default=2)
args = ap.parse_args()
import torch  # noqa: E402

torch.set_num_threads(args.threads)
torch.set_flush_denormal(True)
runs = int(os.environ.get("RUNS", "3"))
print("shape (Sq, Sk, width, heads) | median CPU s per thread | GFLOP/s per thread-second")
for sq, sk, width, heads in [(4096, 4096, 640, 10), (1024, 1024, 1280, 20), (4096, 77, 640, 10),
                             (1024, 1024, 640, 10), (256, 256, 1280, 20)]:
    d = width // heads
    q, k, v = (torch.randn(1, s, width).view(1, s, heads, d).transpose(1, 2) for s in (sq, sk, sk))
    with torch.inference_mode():
        torch.nn.functional.scaled_dot_product_attention(q, k, v)
        times = []
        for _ in range(runs):
            start = time.process_time()
            # diffusers' AttnProcessor2_0: SDPA on [B, heads, S, d], then back to [B, S, width].
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
            out.transpose(1, 2).reshape(1, sq, width)
            times.append((time.process_time() - start) / args.threads)
    times.sort()
    median = times[len(times) // 2]
    print("(%d, %d, %d, %d) | %.4f | %.1f" % (sq, sk, width, heads, median, 4 * sq * sk * width / 1e9 / median))
