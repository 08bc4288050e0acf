"""Reference clip sets for reading FVD numbers: what "no motion" and "stage one's best" score.

Writes three folders of clips (uint8 .npy arrays with class/subject sidecars) for the test videos
that `lfdm evaluate generation --videos N` selects, with its real-clip rule (K frames evenly
spaced over each video):

  OUT/real     the real clips
  OUT/static   each real clip's frame 0 repeated K times (no motion at all)
  OUT/recon    the model's stage one rebuilding every frame of the real clip from its frame 0
               (the motion a perfect stage two could reach through this stage one)

Score them with `lfdm evaluate fvd --real OUT/real --fake OUT/static --by class` (and recon).

Usage: python scripts/fvd_reference_clips.py MODEL_DIR DATA_DIR OUT [--videos 70] [--frames 16]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from lfdm_cli.atomic import atomic_dir
from lfdm_cli.errors import UserError, run_script
from lfdm_cli.evaluation.generation import real_clip
from lfdm_cli.evaluation.selection import open_split, select_videos
from lfdm_cli.lfae.model import load_lfae
from lfdm_cli.modelfolder import load_model_folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("data", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--videos", type=int, default=None, help="as `lfdm evaluate generation --videos`")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--split", default="test")
    args = ap.parse_args()
    if args.out.exists():
        raise UserError(f"{args.out} already exists.", hint="Choose a new OUT folder (the clips are written once).")

    folder = load_model_folder(args.model)
    lfae = load_lfae(folder)
    size = int(folder.meta["resolution"])
    fit = folder.meta.get("fit") or "pad"
    ds = open_split(args.data, args.split)
    records = select_videos(ds, args.videos)
    # Written into a temporary folder that becomes OUT only when every clip is there.
    with atomic_dir(args.out) as tmp, torch.inference_mode():
        for name in ("real", "static", "recon"):
            (tmp / name).mkdir()
        for r in records:
            clip = real_clip(np.asarray(ds.load(r)), args.frames, size, fit)
            x = torch.from_numpy(clip).float().div(255).permute(0, 3, 1, 2)
            rebuilt = lfae.reconstruct(x[:1].expand(len(x), -1, -1, -1), x)["prediction"]
            rebuilt = (rebuilt.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
            sidecar = json.dumps({"class": r.class_name, "subject": r.subject})
            for name, arr in (("real", clip), ("static", np.repeat(clip[:1], len(clip), 0)), ("recon", rebuilt)):
                np.save(tmp / name / f"{r.id}.npy", np.ascontiguousarray(arr))
                (tmp / name / f"{r.id}.json").write_text(sidecar)
    print(f"{args.out}: real, static and recon clips of {len(records)} {args.split} videos, {args.frames} frames")


if __name__ == "__main__":
    run_script(main)
