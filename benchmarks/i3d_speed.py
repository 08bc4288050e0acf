"""Throughput of the FVD feature network (Kinetics-400 I3D, real weights) on this machine.

Measures, each as the median of --repeats timed runs after --warmup untimed ones, in eval mode
under torch.inference_mode, float32:
  forward      the I3D on random [-1, 1] input of shape (B, 3, 16, 224, 224), B in --batches;
               reported as seconds per batch and clips per second
  preprocess   resizing one uint8 16-frame clip of --source-size to 224x224 (bilinear,
               antialiased, float64) and scaling to [-1, 1], as `lfdm evaluate fvd` does

Usage: nice python benchmarks/i3d_speed.py [--threads 2] [--batches 1 4] [--repeats 3] [--warmup 1]
                                          [--device cpu] [--contiguous]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import statistics
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import timed  # noqa: E402

from lfdm_cli.metrics.fvd import preprocess_clip
from lfdm_cli.metrics.i3d import load_i3d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--source-size", type=int, default=128, help="Frame size of the clip to preprocess.")
    ap.add_argument("--contiguous", action="store_true",
                    help="Use the contiguous (NCDHW) memory format instead of channels_last_3d, "
                         "which load_i3d and extract_features use.")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    model = load_i3d(device=device)
    fmt = torch.contiguous_format if args.contiguous else torch.channels_last_3d
    model = model.to(memory_format=fmt)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"device {device}, threads {torch.get_num_threads()}, load average {load}")
    print(f"Kinetics-400 I3D, weights sha256 {model.weights_sha256[:16]}, input (B, 3, {args.frames}, 224, 224) "
          f"float32, memory format {'contiguous' if args.contiguous else 'channels_last_3d'}; "
          f"median of {args.repeats} runs after {args.warmup} warm-up")

    gen = torch.Generator().manual_seed(0)
    for b in args.batches:
        x = (torch.rand(b, 3, args.frames, 224, 224, generator=gen) * 2 - 1).to(device, memory_format=fmt)

        def forward():
            with torch.inference_mode():
                model(x)

        t = statistics.median(timed(forward, args.warmup, args.repeats, sync))
        print(f"forward    batch {b}: {t:7.2f} s/batch  {t / b:6.2f} s/clip  {b / t:6.3f} clips/s")

    clip = np.random.default_rng(0).integers(0, 256, (args.frames, args.source_size, args.source_size, 3),
                                             dtype=np.uint8)
    t = statistics.median(timed(lambda: preprocess_clip(clip), 1, max(args.repeats, 3), lambda: None))
    print(f"preprocess {args.source_size}x{args.source_size} -> 224x224, {args.frames} frames: {t * 1000:7.1f} ms/clip")


if __name__ == "__main__":
    main()
