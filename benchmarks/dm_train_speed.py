"""Speed of one stage-two training step at the paper configuration, by part, with and without the
flow cache (random weights; the work does not depend on the values).

Paper configuration: batch 1, a 40-frame clip of 128x128 frames; stage one = the authors' MUG
LFAE (config/mug128.yaml, 10 regions) giving 32x32x256 latents; stage two = U-Net dim 64,
dim_mults 1,2,4,8, 768-d condition, cosine schedule with 1000 steps.

Parts, each the median of --repeats timed runs after --warmup untimed ones:
  targets (per frame)   the reference's way: stage one called frame by frame (40 calls); --skip-per-frame
  targets (batched)     lfdm without the cache: z0 = encode(x0), then flow and occlusion for all 40
                        frames in one batched stage-one pass (chunks of --stage-one-batch frames)
  targets (cached)      lfdm with the cache: z0 = encode(x0), the clip's 40 flows read from the cache
                        file (in training, data-loader workers do the read)
  cache build           one-off: filling the cache for one --video-frames-frame video (all frames, as
                        the random sampling modes need), per video
  clip load + jitter    reading a 40-frame clip from a memory-mapped video and colour-jittering it
                        (data-loader workers, overlapped with the step)
  unet fwd + loss       the diffusion loss forward (train mode)
  backward + adam       loss.backward(), Adam step, zero_grad
  ema                   the weight average update
A step is targets + unet fwd + loss + backward + adam + ema.

Usage: nice python benchmarks/dm_train_speed.py [--threads 2] [--repeats 3] [--warmup 1]
       [--skip-per-frame] [--frames 40] [--size 128] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import timed  # noqa: E402


def report(name: str, times: list[float], note: str = "") -> float:
    med = statistics.median(times)
    runs = ", ".join(f"{t:.2f}" for t in times)
    print(f"{name:22s} median {med:7.2f} s   runs [{runs}] {note}", flush=True)
    return med


def make_dataset(root: Path, frames: int, size: int):
    from lfdm_cli.data.dataset import (CLASSES_FILE, MANIFEST_FILE, VIDEOS_DIR, Dataset, VideoRecord, new_meta,
                                       save_video_array, write_classes, write_manifest, write_meta)

    (root / VIDEOS_DIR).mkdir(parents=True)
    rng = np.random.default_rng(0)
    # A smooth moving pattern (content does not change the cost; noise would be as fast).
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    video = np.stack([np.stack([np.sin(6 * x + 0.1 * t + c) * np.cos(5 * y - 0.07 * t) for c in range(3)], -1)
                      for t in range(frames)])
    video = ((video * 0.5 + 0.5) * 255 + rng.normal(0, 3, video.shape)).clip(0, 255).astype(np.uint8)
    save_video_array(root / VIDEOS_DIR / "v.npy", video)
    write_classes(root / CLASSES_FILE, ["happiness"])
    write_manifest(root / MANIFEST_FILE, [VideoRecord(id="v", split="train", class_name="happiness", subject=None,
                                                      frames=frames, height=size, width=size, source="bench",
                                                      file=f"{VIDEOS_DIR}/v.npy")])
    meta = new_meta(size=size, fit="pad", importer="bench", source="bench")
    meta["complete"] = True
    write_meta(root, meta)
    return Dataset.open(root)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--size", type=int, default=128, help="Frame height and width (latents are a quarter).")
    ap.add_argument("--video-frames", type=int, default=60, help="Length of the video the cache is built for.")
    ap.add_argument("--stage-one-batch", type=int, default=100)
    ap.add_argument("--skip-per-frame", action="store_true")
    args = ap.parse_args()

    from lfdm_cli.diffusion.config import UNet3DConfig
    from lfdm_cli.diffusion.model import DMSpec, FlowDiffusion, volume_from_flow
    from lfdm_cli.lfae.config import LFAEModelConfig
    from lfdm_cli.lfae.model import LFAE
    from lfdm_cli.training.clips import ClipDataset, frames_used
    from lfdm_cli.training.ema import EMA
    from lfdm_cli.training.flow_cache import FlowCache

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch threads {torch.get_num_threads()}, device {device}")
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    k, size = args.frames, args.size

    torch.manual_seed(0)
    lfae = LFAE(LFAEModelConfig(), size).to(device).eval()
    for p in lfae.parameters():
        p.requires_grad_(False)
    c, side, _ = lfae.latent_shape
    spec = DMSpec(unet=UNet3DConfig(), fea_channels=c, num_frames=k, latent_size=side, encoder="learned",
                  conditions=["happiness"])
    dm = FlowDiffusion(spec).to(device).train()
    optimizer = torch.optim.Adam(dm.parameters(), lr=2e-4, betas=(0.9, 0.99))
    ema = EMA(dm, decay=0.999)
    print(f"stage one {sum(p.numel() for p in lfae.parameters()):,} parameters, latent {c}x{side}x{side}; "
          f"stage two {sum(p.numel() for p in dm.parameters()):,} parameters; clip {k} frames of {size}x{size}")

    with tempfile.TemporaryDirectory() as tmp:
        data = make_dataset(Path(tmp) / "data", max(args.video_frames, k), size)
        record = data.videos[0]
        clips = ClipDataset(data, k, "very_random", color_jitter=True)
        item = clips.get(0, np.random.default_rng(0))
        clip = torch.from_numpy(item["frames"])[None].to(device)
        x0 = clip[:, 0]
        idx = item["indices"]

        def batched():
            with torch.no_grad():
                z = lfae.encode(x0).latent
                flow, occ = lfae.flow_and_occlusion(x0, clip, chunk_size=args.stage_one_batch)
            return z, flow, occ

        def per_frame():
            with torch.no_grad():
                for t in range(k):
                    lfae.flow_and_occlusion(x0, clip[:, t])

        cache = FlowCache(Path(tmp) / "cache", "bench")
        needed = frames_used(record.frames, k, "very_random")

        def build():
            for f in cache.folder.glob("*.safetensors"):
                f.unlink()
            cache.build(lfae, data, lambda r: needed, device, chunk_size=args.stage_one_batch, show_progress=False)

        def cached():
            with torch.no_grad():
                z = lfae.encode(x0).latent
            flow, occ = cache.lookup(record, idx)
            return z, torch.from_numpy(flow)[None].to(device), torch.from_numpy(occ)[None].to(device)

        results = {}
        if not args.skip_per_frame:
            results["per_frame"] = report("targets (per frame)", timed(per_frame, args.warmup, args.repeats, sync),
                                          f"({k} stage-one calls, as the reference)")
        results["batched"] = report("targets (batched)", timed(batched, args.warmup, args.repeats, sync))
        results["build"] = report("cache build", timed(build, 0, 1, sync),
                                  f"(one-off, {len(needed)} frames of one video)")
        results["cached"] = report("targets (cached)", timed(cached, args.warmup, args.repeats, sync))
        rng = np.random.default_rng(1)
        results["load"] = report("clip load + jitter", timed(lambda: clips.get(0, rng), args.warmup, args.repeats, sync),
                                 "(data-loader workers)")

        z, flow, occ = batched()
        volume = volume_from_flow(flow, occ)
        state = {}

        def forward():
            state["loss"] = dm.loss_for_names(volume, z, ["happiness"]).loss

        def backward():
            state["loss"].backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        fwd, bwd = [], []
        for i in range(args.warmup + args.repeats):
            t0 = time.perf_counter()
            forward()
            sync()
            t1 = time.perf_counter()
            backward()
            sync()
            t2 = time.perf_counter()
            if i >= args.warmup:
                fwd.append(t1 - t0)
                bwd.append(t2 - t1)
        results["fwd"] = report("unet fwd + loss", fwd)
        results["bwd"] = report("backward + adam", bwd)
        results["ema"] = report("ema", timed(lambda: ema.update(dm, 1), args.warmup, args.repeats, sync))

    net = results["fwd"] + results["bwd"] + results["ema"]
    print(f"step without cache: {results['batched'] + net:6.2f} s  (targets {results['batched']:.2f} + network {net:.2f})")
    print(f"step with cache:    {results['cached'] + net:6.2f} s  (targets {results['cached']:.2f} + network {net:.2f})")
    if "per_frame" in results:
        print(f"step, targets frame by frame as the reference: {results['per_frame'] + net:6.2f} s")
    if device.type == "cpu":
        import resource

        print(f"peak resident memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
