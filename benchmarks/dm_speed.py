"""CPU (or GPU) speed of the stage-two model at the paper configuration (random weights).

Paper configuration: U-Net dim 64, dim_mults 1,2,4,8, 3+256 input channels, 768-d condition,
40 frames of 32x32 latents, batch 1, guidance 1 (one network pass per step).

Measures, each as the median of --repeats timed runs after --warmup untimed ones:
  unet_call     one U-Net forward (eval mode, no grad) - compare with the reference's 4.59 s;
                also with the reference's input (z0 concatenated and convolved for every frame)
  ddim10        a whole 10-step DDIM sample (trailing spacing, eta 0): 10 U-Net calls + sampler
  train_step    loss forward (t, noise, condition dropout) + backward + Adam step (train mode)
Variants: "default" (the latent's share of the stem computed once per sample) and
"channels-last" (UNet3D.use_channels_last(): faster oneDNN convolutions, about 3x the float32
rounding error of the default layout, still within the parity tolerances).

Usage: nice python benchmarks/dm_speed.py [--threads 2] [--repeats 3] [--warmup 1] [--device cpu]
       [--skip-train] [--skip-ddim] [--variants default,channels-last] [--frames 40] [--size 32]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from lfdm_cli.diffusion.model import DMSpec, FlowDiffusion


def timed(fn, warmup: int, repeats: int, sync) -> list[tuple[float, float]]:
    """(wall seconds, process CPU seconds) of each timed run."""
    for _ in range(warmup):
        fn()
        sync()
    times = []
    for _ in range(repeats):
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        sync()
        times.append((time.perf_counter() - start, time.process_time() - cpu))
    return times


def report(name: str, times: list[tuple[float, float]], note: str = "") -> None:
    walls = [w for w, _ in times]
    cpus = [c for _, c in times]
    runs = ", ".join(f"{w:.2f}" for w in walls)
    # On a busy machine wall time is inflated by waiting for a core; CPU time per thread is a
    # rough estimate of the wall time on an idle one.
    print(f"{name:12s} median wall {statistics.median(walls):7.2f} s  runs [{runs}]  "
          f"median CPU {statistics.median(cpus):7.2f} s (/{torch.get_num_threads()} threads = "
          f"{statistics.median(cpus) / torch.get_num_threads():.2f} s) {note}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--size", type=int, default=32, help="Latent height and width.")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--skip-ddim", action="store_true")
    ap.add_argument("--variants", default="default,channels-last")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    spec = DMSpec(fea_channels=256, num_frames=args.frames, latent_size=args.size, encoder="bert",
                  conditions=["happiness"])
    model = FlowDiffusion(spec, condition_rows=torch.randn(1, 768)).to(device)
    n_params = sum(p.numel() for n, p in model.named_parameters() if n.startswith("unet."))
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, device {device}, "
          f"threads {torch.get_num_threads()}, load average before {load}")
    print(f"paper configuration: U-Net dim 64 x (1,2,4,8), {spec.in_channels} input channels, "
          f"{n_params:,} U-Net parameters, {args.frames} frames at {args.size}x{args.size}, batch 1")
    print(f"each figure: median of {args.repeats} timed runs after {args.warmup} warm-up run(s); "
          f"wall time and process CPU time")

    g = torch.Generator().manual_seed(1)
    fea = torch.randn(1, 256, args.size, args.size, generator=g).to(device)
    x = torch.randn(1, 3, args.frames, args.size, args.size, generator=g).to(device)
    cond, null = model.embed(["happiness"])
    t = torch.tensor([500], device=device)

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for variant in variants:
        if variant not in ("default", "channels-last"):
            raise SystemExit(f"unknown variant {variant!r}")
        print(f"--- variant: {variant}")
        model.unet.use_channels_last(variant == "channels-last")
        model.eval()
        den = model.denoiser(fea, cond, 1.0, null)
        with torch.no_grad():
            report("unet_call", timed(lambda: den(x, t), args.warmup, args.repeats, sync),
                   "(reference: 4.59 s per call on the 2-core baseline machine)")
            if variant == "default":
                full = torch.cat([x, fea.unsqueeze(2).repeat(1, 1, args.frames, 1, 1)], dim=1)
                report("unet_refin", timed(lambda: model.unet(full, t, cond, null), args.warmup, args.repeats, sync),
                       "(same network fed the reference's concatenated input)")
        if not args.skip_ddim:
            report("ddim10", timed(lambda: model.sample(fea, cond, null_mask=null, sampler="ddim", steps=10,
                                                        generator=torch.Generator().manual_seed(2)),
                                   0, args.repeats, sync),
                   "(reference: 46.0 s for its 10 U-Net calls)")
        if not args.skip_train:
            model.train()
            opt = torch.optim.Adam(model.parameters(), lr=2e-4, betas=(0.9, 0.99))
            x0 = torch.rand(1, 3, args.frames, args.size, args.size, generator=g).to(device) * 2 - 1

            def step():
                opt.zero_grad(set_to_none=True)
                out = model.loss(x0, fea, cond, null, generator=torch.Generator().manual_seed(3))
                out.loss.backward()
                opt.step()

            report("train_step", timed(step, args.warmup, args.repeats, sync),
                   "(reference: 6.5 s forward+loss + 5.9 s backward+Adam = 12.4 s)")
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"load average after {load}")


if __name__ == "__main__":
    main()
