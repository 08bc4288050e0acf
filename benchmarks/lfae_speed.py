"""CPU (or GPU) speed of the stage-one model at the paper configuration (random weights).

Measures (wall clock and process CPU time), each as the median of --repeats timed runs after --warmup untimed ones:
  reconstruct   LFAE.reconstruct(source, driving), eval mode, no grad, batch 1 and 8
  train_step    forward + backward of reconstruct with a plain L1 loss, train mode, batch 1 and 8
                (a lower bound of a training step: no VGG19 perceptual pyramid, no equivariance pass)
  decode        encode one source once, then decode 40 frames from given latent flows in one
                batched pass (also with chunk_size 8), and the reference's way for comparison:
                re-encode the source and decode frame by frame (40 calls)

Usage: nice python benchmarks/lfae_speed.py [--threads 2] [--repeats 5] [--warmup 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from lfdm_cli.lfae.config import LFAEModelConfig
from lfdm_cli.lfae.model import LFAE


def timed(fn, warmup: int, repeats: int, sync) -> tuple[list[float], list[float]]:
    """Wall-clock and process CPU seconds of each timed run."""
    for _ in range(warmup):
        fn()
        sync()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        sync()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--skip-train", action="store_true", help="Skip the forward+backward measurement.")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    model = LFAE(LFAEModelConfig(), 128).to(device).eval()
    n_params = sum(p.numel() for p in model.parameters())
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, device {device}, "
          f"threads {torch.get_num_threads()}, load average {load}")
    print(f"paper configuration (mug128): 128x128, {model.config.num_regions} regions, {n_params / 1e6:.1f}M parameters")
    print(f"each number: median of {args.repeats} timed runs after {args.warmup} warm-up run(s); "
          "cpu = process CPU seconds summed over threads\n")

    def report(name: str, times: tuple[list[float], list[float]], per: int | None = None) -> None:
        wall, cpu = times
        med = statistics.median(wall)
        extra = f"  ({med / per * 1000:.0f} ms per frame)" if per else ""
        # On a shared machine wall time grows with other jobs' load; CPU seconds (all threads) much less.
        print(f"{name:44s} wall median {med:7.3f} s  min {min(wall):7.3f} s  "
              f"cpu median {statistics.median(cpu):7.3f} s{extra}", flush=True)

    gen = torch.Generator().manual_seed(1)
    for batch in (1, 8):
        src = torch.rand(batch, 3, 128, 128, generator=gen).to(device)
        drv = torch.rand(batch, 3, 128, 128, generator=gen).to(device)
        with torch.no_grad():
            report(f"reconstruct, batch {batch}", timed(lambda: model.reconstruct(src, drv), args.warmup,
                                                        args.repeats, sync), per=batch)
    if not args.skip_train:
        model.train()
        for batch in (1, 8):
            src = torch.rand(batch, 3, 128, 128, generator=gen).to(device)
            drv = torch.rand(batch, 3, 128, 128, generator=gen).to(device)

            def step():
                model.zero_grad(set_to_none=True)
                out = model(src, drv)
                (out["prediction"] - drv).abs().mean().backward()

            report(f"forward+backward (L1 only), batch {batch}", timed(step, args.warmup, args.repeats, sync),
                   per=batch)
        model.eval()

    k = args.frames
    src = torch.rand(1, 3, 128, 128, generator=gen).to(device)
    with torch.no_grad():
        flow, occ = model.flow_and_occlusion(src, torch.rand(1, k, 3, 128, 128, generator=gen).to(device),
                                             chunk_size=8)

        def batched(chunk=None):
            return model.decode(model.encode(src), flow, occ, chunk_size=chunk)

        def per_frame():
            for i in range(k):
                model.decode(src, flow[:, i], occ[:, i])

        report(f"decode {k} frames, one pass (encode once)", timed(batched, args.warmup, args.repeats, sync), per=k)
        report(f"decode {k} frames, chunk_size 8", timed(lambda: batched(8), args.warmup, args.repeats, sync), per=k)
        report(f"decode {k} frames, per frame + re-encode", timed(per_frame, args.warmup, args.repeats, sync), per=k)


if __name__ == "__main__":
    main()
