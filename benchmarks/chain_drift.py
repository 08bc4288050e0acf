"""Drift of chained generation: how far each segment's last frame strays from the input image.

Runs every chaining strategy of `lfdm chain` (reanchor, naive, crossfade, noised) for --segments
segments from each input image and compares the last frame of every segment with the (fitted)
input image on a region that should stay still: by default the border strip of the frame
(--border, a fraction of the side; faces and bodies sit in the middle of the authors' datasets),
or a mask image (--mask: white = still), or the whole frame (--region full). Per segment it
reports L1 (mean absolute difference, 0..1) and SSIM (11x11 Gaussian window, reflect-padded so
thin strips have values, averaged over the region), averaged over the images; then the mean over
all segments and the last segment's values. Printed as a markdown table.

With --fvd, also the FVD (Kinetics-400 I3D features) between the clips of the early segments
(the first third) and those of the late ones (the last third), over all images, per strategy:
a video whose late segments look like its early ones scores low. With few images this is a
small-sample FVD (its absolute value is biased upwards); compare strategies with each other.

A random model measures nothing useful (its motion is noise); run this on a trained model:

    nice python benchmarks/chain_drift.py weights/synthfaces64 weights/synthfaces64/examples/*.png \\
        --segments 10 --steps 10 --threads 2

Every strategy gets the same seeds, so segment i samples from the same noise in every column.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lfdm_cli.chain import STRATEGIES, chain
from lfdm_cli.io import fit_frames, load_image
from lfdm_cli.metrics.frame_metrics import SSIM_K1, SSIM_K2, SSIM_WINDOW, gaussian_window
from lfdm_cli.pipeline import GenerationPipeline, SamplingSettings


def region_mask(size: int, region: str, border: float, mask: Path | None) -> torch.Tensor:
    """(size, size) bool: the pixels that should not move."""
    if mask is not None:
        gray = fit_frames(load_image(mask), size, "stretch")[..., 0]
        return torch.from_numpy(gray >= 128)
    if region == "full":
        return torch.ones(size, size, dtype=torch.bool)
    width = max(1, int(round(border * size)))
    m = torch.zeros(size, size, dtype=torch.bool)
    m[:width] = m[-width:] = True
    m[:, :width] = m[:, -width:] = True
    return m


def ssim_map(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-pixel SSIM (H, W) of two (3, H, W) images in [0, 1], channels averaged."""
    g = gaussian_window(SSIM_WINDOW, dtype=torch.float64)
    pad = SSIM_WINDOW // 2
    x, y = x[None].double(), y[None].double()
    c = x.shape[1]

    def blur(t):
        t = F.pad(t, (pad, pad, pad, pad), mode="reflect")
        t = F.conv2d(t, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        return F.conv2d(t, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)

    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = SSIM_K1 ** 2, SSIM_K2 ** 2
    smap = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (sxx + syy + c2))
    return smap[0].mean(0)


def frame_drift(frame: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    l1 = (frame - reference).abs().mean(0)[mask].mean().item()
    ssim = ssim_map(frame, reference)[mask].mean().item()
    return l1, ssim


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path, help="model folder")
    ap.add_argument("images", type=Path, nargs="+", help="input images")
    ap.add_argument("--segments", type=int, default=10)
    ap.add_argument("--frames-per-segment", type=int, default=None, help="default: the model's clip length")
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--conditions", default=None, help="comma-separated, cycled (default: all the model's)")
    ap.add_argument("--region", choices=("border", "full"), default="border")
    ap.add_argument("--border", type=float, default=0.125, help="strip width as a fraction of the side")
    ap.add_argument("--mask", type=Path, default=None, help="mask image, white = still region")
    ap.add_argument("--overlap", type=int, default=None, help="crossfade overlap (default 4, at most half a clip)")
    ap.add_argument("--cond-noise", type=float, default=None, help="noised strategy (default 0.1)")
    ap.add_argument("--sampler", default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--eta", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fit", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fvd", action="store_true", help="also FVD of late segments against early ones")
    ap.add_argument("--json", type=Path, default=None, help="also write all numbers here")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    pipe = GenerationPipeline.from_folder(args.model, device=args.device)
    base = pipe.default_settings()
    settings = SamplingSettings(sampler=args.sampler or base.sampler, steps=args.steps or base.steps,
                                eta=base.eta if args.eta is None else args.eta, guidance=base.guidance,
                                ddim_spacing=base.ddim_spacing)
    conditions = args.conditions.split(",") if args.conditions else pipe.conditions
    strategies = args.strategies.split(",")
    mask = region_mask(pipe.resolution, args.region, args.border, args.mask)
    inputs = pipe.prepare_images([load_image(p) for p in args.images], args.fit).cpu()

    # results[strategy][segment] = list over images of (l1, ssim)
    results: dict[str, list[list[tuple[float, float]]]] = {}
    seconds: dict[str, float] = {}
    third = max(1, args.segments // 3)
    early_late: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}
    for strategy in strategies:
        results[strategy] = [[] for _ in range(args.segments)]
        start = time.perf_counter()
        for x in inputs:
            res = chain(pipe, x, conditions, segments=args.segments, frames_per_segment=args.frames_per_segment,
                        strategy=strategy, overlap=args.overlap, cond_noise=args.cond_noise, seed=args.seed,
                        settings=settings)
            for seg in res.segments:
                results[strategy][seg.index].append(frame_drift(res.frames[seg.end - 1], x, mask))
                if args.fvd and (seg.index < third or seg.index >= args.segments - third):
                    clip = (res.frames[seg.start:seg.end].permute(0, 2, 3, 1).clamp(0, 1) * 255).round()
                    side = early_late.setdefault(strategy, ([], []))[0 if seg.index < third else 1]
                    side.append(clip.to(torch.uint8).numpy())
        seconds[strategy] = time.perf_counter() - start

    def mean(values):
        return statistics.fmean(values) if values else float("nan")

    region = f"mask {args.mask}" if args.mask else ("whole frame" if args.region == "full"
                                                     else f"border strip {args.border:g} of the side")
    print(f"Chain drift: model {args.model} (digest {pipe.digest}), {len(inputs)} image(s), "
          f"{args.segments} segments of {args.frames_per_segment or pipe.default_frames} frames, "
          f"{settings.sampler} {settings.steps} steps, region: {region} ({int(mask.sum())} px), "
          f"seed {args.seed}.\n")
    header = "| segment | " + " | ".join(f"{s} L1 | {s} SSIM" for s in strategies) + " |"
    print(header)
    print("|---:|" + "---:|---:|" * len(strategies))
    for i in range(args.segments):
        cells = []
        for s in strategies:
            pairs = results[s][i]
            cells += [f"{mean([p[0] for p in pairs]):.4f}", f"{mean([p[1] for p in pairs]):.4f}"]
        print(f"| {i + 1} | " + " | ".join(cells) + " |")
    for label, pick in (("mean", slice(None)), ("last", slice(-1, None))):
        cells = []
        for s in strategies:
            pairs = [p for seg in results[s][pick] for p in seg]
            cells += [f"**{mean([p[0] for p in pairs]):.4f}**", f"**{mean([p[1] for p in pairs]):.4f}**"]
        print(f"| {label} | " + " | ".join(cells) + " |")
    print("\nseconds per strategy: " + ", ".join(f"{s} {seconds[s]:.1f}" for s in strategies))
    fvds: dict[str, float] = {}
    if args.fvd:
        from lfdm_cli.metrics.fvd import extract_features, frechet_distance
        from lfdm_cli.metrics.i3d import MIN_FRAMES, load_i3d

        i3d = load_i3d(device=args.device)
        for s in strategies:
            early, late = early_late[s]
            if min(c.shape[0] for c in early + late) < MIN_FRAMES:
                print(f"FVD skipped: segments shorter than the I3D minimum of {MIN_FRAMES} frames")
                break
            # Clips of one I3D batch must have equal lengths (crossfade's differ): one at a time.
            fe = extract_features(early, i3d, batch_size=1, progress=False)
            fl = extract_features(late, i3d, batch_size=1, progress=False)
            fvds[s] = frechet_distance(fe, fl)
        if fvds:
            print(f"\nFVD of the last {third} segments against the first {third} "
                  f"({len(early_late[strategies[0]][0])} clips each): "
                  + ", ".join(f"{s} {v:.1f}" for s, v in fvds.items()))
    if args.json:
        args.json.write_text(json.dumps({"model": str(args.model), "digest": pipe.digest,
                                         "images": [str(p) for p in args.images], "region": region,
                                         "settings": settings.to_dict(), "seconds": seconds,
                                         "fvd_late_vs_early": fvds,
                                         "results": {s: [[list(p) for p in seg] for seg in v]
                                                     for s, v in results.items()}}, indent=2))


if __name__ == "__main__":
    main()
