"""Stage one's self-reconstruction of test videos: the paper's Table 3.

For every evaluated video:

1. the clip: `frames` (40) indices evenly spaced over the whole video, floor(linspace(0, T-1, 40))
   as the authors' test sets take them; a shorter video gives all its frames (no padding, so no
   frame is counted twice) and is listed in the settings;
2. the reference (source) frame is the clip's first frame, the video's frame 0;
3. every clip frame, frame 0 included, is reconstructed from the reference: the source is encoded
   and its regions predicted once, flows and frames are computed `batch_size` frames at a time
   (the same numbers as `LFAE.reconstruct(source, frame)` frame by frame);
4. L1 (mean absolute error per pixel and channel, values in [0, 1]), PSNR (dB, per frame, capped
   at 100 dB) and SSIM (`lfdm_cli.metrics.frame_metrics`) of the float prediction against the
   real frame; scores are means over every frame of every clip.

The authors' script (LFAE/test_flowautoenc_*.py) divides the summed absolute error by
videos x pixels, i.e. it reports the per-pixel L1 summed over a clip's frames; that number is
saved too, as `l1_authors_script`, so results can be set beside theirs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from lfdm_cli.errors import RunFailure, UserError

DEFAULT_FRAMES = 40
PSNR_CAP_DB = 100.0
FRAME_SAMPLING = ("floor(linspace(0, T-1, frames)) over the whole video; a video shorter than `frames` "
                  "uses all its frames (listed in short_videos)")
REFERENCE_FRAME = "the clip's first frame (the video's frame 0); every clip frame, frame 0 included, is rebuilt from it"
AVERAGING = ("L1: mean |real - prediction| per pixel and channel on [0, 1]; PSNR: per frame (capped at "
             f"{PSNR_CAP_DB:g} dB), then averaged; SSIM: Gaussian 11x11, sigma 1.5, valid region; all "
             "averaged over every reconstructed frame of every clip (float predictions, not quantised)")
AUTHORS_L1 = ("L1 summed over a clip's frames, averaged over clips: what the authors' "
              "LFAE/test_flowautoenc_*.py prints (sum / (videos x H x W x 3))")

# (source (1, 3, S, S), clip (F, 3, S, S)) -> predictions (F, 3, S, S), floats in [0, 1].
Reconstructor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def clip_indices(total: int, frames: int) -> np.ndarray:
    """Frame indices of a video's evaluation clip (see the module docstring)."""
    if total < 1 or frames < 1:
        raise ValueError(f"need at least one frame, got total={total}, frames={frames}")
    if total >= frames:
        return np.linspace(0, total - 1, frames, dtype=np.int64)
    return np.arange(total, dtype=np.int64)


def lfae_reconstructor(lfae, batch_size: int) -> Reconstructor:
    """Reconstruct a clip from its source with the LFAE, `batch_size` frames per pass."""
    def run(source: torch.Tensor, clip: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            flow, occlusion = lfae.flow_and_occlusion(source, clip[None], chunk_size=batch_size)
            out = lfae.decode(lfae.encode(source), flow, occlusion, chunk_size=batch_size)
        return out["prediction"][0]
    return run


def frame_scores(real: torch.Tensor, prediction: torch.Tensor) -> dict[str, np.ndarray]:
    """Per-frame L1, PSNR and SSIM of (F, 3, H, W) tensors in [0, 1], computed in float64."""
    from lfdm_cli.metrics.frame_metrics import l1_error, psnr, ssim

    x, y = real.to(torch.float64), prediction.to(torch.float64)
    return {"l1": l1_error(x, y).numpy(), "psnr": psnr(x, y, max_db=PSNR_CAP_DB).numpy(),
            "ssim": ssim(x, y).numpy()}


def _model_fit(meta: dict[str, Any]) -> str:
    fit = meta.get("fit") or (meta.get("data") or {}).get("fit")
    return fit if fit in ("pad", "crop", "stretch") else "pad"


def evaluate_reconstruction(model: str | Path | None, data: str | Path, *, split: str = "test",
                            frames: int = DEFAULT_FRAMES, videos: int | None = None, batch_size: int = 16,
                            device: str | torch.device = "cpu", progress: bool = True,
                            reconstructor: Reconstructor | None = None) -> dict[str, Any]:
    """Self-reconstruction scores of a model folder's stage one on a dataset split.

    Returns {"scores", "settings", "per_video", "warnings"}. `reconstructor` replaces the LFAE
    (tests use it to check the metric plumbing with known outputs).
    """
    from lfdm_cli import __version__
    from lfdm_cli.evaluation.selection import describe_dataset, model_name, open_split, select_videos
    from lfdm_cli.io import fit_frames
    from lfdm_cli.lfae.model import load_lfae
    from lfdm_cli.metrics.frame_metrics import to_unit_float
    from lfdm_cli.modelfolder import load_model_folder
    from lfdm_cli.pipeline import default_model_path
    from lfdm_cli.progress import Progress

    if frames < 1:
        raise UserError(f"--frames must be at least 1, got {frames}.")
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}.")
    device = torch.device(device)
    ds = open_split(data, split)
    chosen = select_videos(ds, videos)
    folder = load_model_folder(model if model is not None else default_model_path())
    lfae = load_lfae(folder, device=device)
    size, fit = lfae.frame_size, _model_fit(folder.meta)
    if size < 11:
        raise UserError(f"SSIM needs frames of at least 11x11; the model works at {size}x{size}.")
    run = reconstructor or lfae_reconstructor(lfae, batch_size)

    per_video: list[dict[str, Any]] = []
    all_scores: dict[str, list[np.ndarray]] = {"l1": [], "psnr": [], "ssim": []}
    short: list[dict[str, Any]] = []
    fitted_from: set[tuple[int, int]] = set()
    start = time.perf_counter()
    with Progress(len(chosen), "reconstructing", unit="video", enabled=progress) as bar:
        for record in chosen:
            video = ds.load(record)
            idx = clip_indices(video.shape[0], frames)
            clip = np.asarray(video[idx])
            if clip.shape[1:3] != (size, size):
                fitted_from.add(tuple(clip.shape[1:3]))
                clip = fit_frames(clip, size, fit)
            if len(idx) < frames:
                short.append({"id": record.id, "frames": int(video.shape[0])})
            real = to_unit_float(clip).to(device)
            prediction = run(real[:1], real).float().cpu()
            if prediction.shape != real.shape:
                raise RuntimeError(f"reconstruction has shape {tuple(prediction.shape)}, expected {tuple(real.shape)}")
            if not torch.isfinite(prediction).all():
                raise RunFailure(f"The auto-encoder produced NaN or infinite frames for video '{record.id}'.",
                                 hint="The stage-one weights may be broken.")
            s = frame_scores(real.cpu(), prediction)
            for key, values in s.items():
                all_scores[key].append(values)
            per_video.append({"id": record.id, "class": record.class_name, "subject": record.subject,
                              "frames": len(idx), **{k: float(v.mean()) for k, v in s.items()}})
            bar.update(1)
    elapsed = time.perf_counter() - start

    flat = {k: np.concatenate(v) for k, v in all_scores.items()}
    scores = {
        "l1": float(flat["l1"].mean()),
        "psnr": float(flat["psnr"].mean()),
        "ssim": float(flat["ssim"].mean()),
        "l1_authors_script": float(flat["l1"].sum() / len(per_video)),
        "videos": len(per_video),
        "frames": int(flat["l1"].size),
    }
    warnings = []
    if short:
        warnings.append(f"{len(short)} video(s) have fewer than {frames} frames; all their frames were used "
                        f"(e.g. {', '.join(s['id'] + ' (' + str(s['frames']) + ')' for s in short[:3])}).")
    if fitted_from:
        warnings.append(f"Dataset frames ({', '.join(f'{h}x{w}' for h, w in sorted(fitted_from))}) were fitted "
                        f"to the model's {size}x{size} ({fit}) before reconstruction.")
    settings = {
        "model": {"path": str(folder.path.resolve()), "name": model_name(folder.path),
                  "digest": folder.digest(), "resolution": size, "fit": fit},
        "data": describe_dataset(ds, split, chosen),
        "videos": len(per_video),
        "frames": frames,
        "frame_sampling": FRAME_SAMPLING,
        "reference_frame": REFERENCE_FRAME,
        "metrics": AVERAGING,
        "l1_authors_script": AUTHORS_L1,
        "short_videos": short,
        "device": str(device),
        "batch_size": batch_size,
        "seconds": round(elapsed, 2),
        "lfdm_version": __version__,
        "torch_version": torch.__version__,
        "video_ids": [r.id for r in chosen],
    }
    return {"scores": scores, "settings": settings, "per_video": per_video, "warnings": warnings}


def reconstruction_table(result: dict[str, Any]) -> str:
    """The scores as a markdown table (one row; the Table 3 columns)."""
    s, st = result["scores"], result["settings"]
    data_name = Path(st["data"]["path"]).name
    lengths = sorted({v["frames"] for v in result["per_video"]})
    frames = str(lengths[0]) if len(lengths) == 1 else f"{lengths[0]}-{lengths[-1]}"
    return "\n".join([
        "| model | data | videos | frames per clip | L1 ↓ | PSNR ↑ | SSIM ↑ |",
        "|---|---|---:|---:|---:|---:|---:|",
        f"| {st['model']['name']} | {data_name} ({st['data']['split']}) | {s['videos']} | {frames} | "
        f"{s['l1']:.4f} | {s['psnr']:.2f} | {s['ssim']:.4f} |",
    ])
