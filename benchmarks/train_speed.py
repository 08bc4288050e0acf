"""Speed of one stage-one training step at the paper configuration (random weights).

One step = what `lfdm train lfae` does per batch: LFAE.reconstruct(source, driving), the
perceptual pyramid at scales 1, 1/2, 1/4, 1/8 (VGG19 relu1_1..relu5_1, in torchvision's layout
with random weights: the pretrained ones cost the same; or --loss fallback for the L1+SSIM
pyramid), the equivariance pass (random affine+TPS warp of the driving frame, region predictor,
shift and affine losses), backward, Adam step. Data loading is not included (it runs in
DataLoader workers beside the step).

Model: the paper's MUG 128x128 stage one (10 regions, default widths, recipes/mug128.yaml).
Each figure is the median of --repeats timed steps after --warmup untimed ones; the phases
(forward incl. losses / backward / optimizer) are timed separately within the same steps.

Usage: nice python benchmarks/train_speed.py [--batch 1 8] [--threads 2] [--repeats 3] [--warmup 1]
                                             [--loss vgg|fallback] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
import resource
import statistics
import time

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_name  # noqa: E402

from lfdm_cli.config.recipe import load_recipe
from lfdm_cli.lfae.losses import (
    PERCEPTUAL_FALLBACK,
    L1SSIMPyramidLoss,
    LFAETrainingModule,
    PerceptualPyramidLoss,
    VGG19Features,
)
from lfdm_cli.lfae.model import LFAE
from lfdm_cli.lfae.transforms import RandomTPS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--loss", choices=("vgg", "fallback"), default="vgg")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    recipe = load_recipe("mug128")
    train = recipe.lfae.train
    torch.manual_seed(0)
    model = LFAE(recipe.lfae.model, recipe.data.size)
    if args.loss == "vgg":
        perceptual = PerceptualPyramidLoss(train.scales, train.loss_weights.perceptual, VGG19Features())
    else:
        perceptual = L1SSIMPyramidLoss(train.scales, train.loss_weights.perceptual)
    module = LFAETrainingModule(model, train, perceptual).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=train.lr, betas=(0.5, 0.999))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"machine: {cpu_name()}, {os.cpu_count()} logical CPUs; torch {torch.__version__}; device {device}; "
          f"torch threads {torch.get_num_threads()}")
    print(f"model: recipes/mug128.yaml stage one, 128x128, {recipe.lfae.model.num_regions} regions, "
          f"{n_params / 1e6:.1f}M parameters; loss: {'VGG19 perceptual pyramid' if args.loss == 'vgg' else PERCEPTUAL_FALLBACK} "
          f"(scales {train.scales}) + equivariance shift/affine; Adam")
    print(f"method: median of {args.repeats} timed steps after {args.warmup} warm-up step(s), fp32, "
          f"random weights and frames; load average before: {os.getloadavg()}")
    print()
    print("| batch | step (s) | per sample (s) | forward+losses (s) | backward (s) | optimizer (s) |")
    print("|---|---|---|---|---|---|")
    gen = torch.Generator().manual_seed(0)
    for batch in args.batch:
        source = torch.rand(batch, 3, 128, 128, generator=gen).to(device)
        driving = torch.rand(batch, 3, 128, 128, generator=gen).to(device)
        phases: list[tuple[float, float, float]] = []
        for i in range(args.warmup + args.repeats):
            transform = RandomTPS.sample(batch, train.transform_params, generator=gen, device=device)
            optimizer.zero_grad(set_to_none=True)
            sync()
            t0 = time.perf_counter()
            losses, _ = module(source, driving, transform)
            loss = sum(losses.values())
            sync()
            t1 = time.perf_counter()
            loss.backward()
            sync()
            t2 = time.perf_counter()
            optimizer.step()
            sync()
            t3 = time.perf_counter()
            if i >= args.warmup:
                phases.append((t1 - t0, t2 - t1, t3 - t2))
        fwd, bwd, opt = (statistics.median(p[k] for p in phases) for k in range(3))
        step = statistics.median(sum(p) for p in phases)
        print(f"| {batch} | {step:.2f} | {step / batch:.2f} | {fwd:.2f} | {bwd:.2f} | {opt:.2f} |", flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print()
    print(f"peak resident memory: {peak:.0f} MiB; load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
