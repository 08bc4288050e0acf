"""Both stages end to end: the paper's Table 1 (conditional) and Table 4 (stochastic) numbers.

For every evaluated test video (see `lfdm_cli.evaluation.selection`) the model generates one
K-frame video from the real video's frame 0 (fitted to the model's resolution as `lfdm generate`
fits images), with

- `class`: the video's own class as the condition (Table 1);
- `null`: the null condition, the model's null embedding (learned, or zeros, as the model was
  built): stochastic generation, Table 4; the only mode for a model trained without conditions;
- `shuffled`: a wrong class, the control that shows how much the condition matters: the dataset's
  classes (classes.txt order, those the model knows) are shifted by one, cyclically, so every
  video gets the next class's condition and none keeps its own.

Video i of the selection uses seed `seed + i`, with one CPU generator per video, so a video does
not depend on the batch it was made in or on how many videos are evaluated.

Generated videos go to WORK_DIR/videos/<video id>.npy (uint8, lossless) with a JSON sidecar
(<video id>.json: source video, its class and subject, the condition, seed, sampler, timings and
the `job` key). A later run reuses every video whose sidecar records the same job, so an
interrupted evaluation resumes and a larger --videos only generates the new ones. The folder is
also a valid `lfdm evaluate fvd --fake` set.

Scores, real against generated (one real clip per generated video):

- real clips: K frames evenly spaced over the whole real video, floor(linspace(0, T-1, K)), a
  shorter video padded with its last frame: the authors' test-set sampling, and the span of
  motion the diffusion model is trained to generate (its training clips start at frame 0 and
  cover the video);
- FVD and KVD over all videos; cFVD grouped by the source video's class (in `class` mode that
  is the condition; in `shuffled` mode it rises when the model follows the wrong condition);
  sFVD grouped by subject (the same identity x0), both mean ± std over groups;
- first-frame SSIM: generated frame 0 against the input image;
- time per video: each batch's encode + sample + decode time divided by its size (from the
  sidecars; model loading and writing excluded).

The real clips' I3D features depend only on the dataset, the clip setting and the network, so they
are kept in the lfdm cache folder (`$LFDM_CACHE/real-features/`) and shared by the evaluations of
every sampler, model and condition mode on the same data.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from lfdm_cli.errors import UserError, unknown_name_error

CONDITION_MODES = ("class", "null", "shuffled")
SIDECAR_FORMAT = "lfdm-evaluate-generation/1"
DEFAULT_WORK_ROOT = Path("lfdm-eval")
VIDEOS_DIR = "videos"
SCORES_FILE = "scores.json"

REAL_CLIPS = ("K frames evenly spaced over the whole real video, floor(linspace(0, T-1, K)); a shorter "
              "video is padded with its last frame (the authors' test-set sampling)")
FAKE_CLIPS = "the K generated frames; frame 0 is the model's own, generated like the others"
CFVD_GROUPS = "the class of the source video (in class mode, the condition)"
SFVD_GROUPS = "the subject of the source video (same identity x0)"
FIRST_FRAME = ("SSIM of generated frame 0 against the input image (the source video's frame 0 fitted to "
               "the model's resolution); mean ± std over videos")
TIME_RULE = ("encode + sample + decode time of each generation batch divided by its size, from the "
             "sidecars; model loading and file writing excluded")
CONDITION_RULES = {
    "class": "each video's own class",
    "null": "the null condition (the model's null embedding)",
    "shuffled": "the next class (classes.txt order, cyclic) instead of the video's own",
}


@dataclass
class GenerationEvalConfig:
    """What to generate. Unset sampling values take the model's defaults."""

    split: str = "test"
    videos: int | None = None
    sampler: str | None = None
    steps: int | None = None
    eta: float | None = None
    guidance: float | None = None
    ddim_spacing: str | None = None
    frames: int | None = None
    seed: int = 0
    condition_mode: str = "class"
    batch_size: int = 8
    ema: bool = True
    precision: str = "fp32"


# --------------------------------------------------------------------------------------------
# Conditions


def null_embedding_kind(pipeline) -> str:
    """'learned' when the U-Net holds a trained null embedding, else 'zero' (the reference's
    default: a zero vector)."""
    return "learned" if isinstance(pipeline.dm.unet.null_cond, torch.nn.Parameter) else "zero"


def shuffled_classes(classes: list[str], known: list[str]) -> dict[str, str]:
    """class -> the next class the model knows, cyclically (a permutation with no fixed point)."""
    usable = [c for c in classes if c in known]
    if len(usable) < 2:
        raise UserError("--condition-mode shuffled needs at least two classes that both the dataset and the "
                        f"model know; found {len(usable)} ({', '.join(usable) or 'none'}).")
    return {c: usable[(i + 1) % len(usable)] for i, c in enumerate(usable)}


def conditions_for(mode: str, records, dataset_classes: list[str], pipeline) -> tuple[list[str], dict[str, Any]]:
    """The condition of every record, and a description of how they were chosen."""
    from lfdm_cli.diffusion.conditions import NULL_CONDITION

    if mode not in CONDITION_MODES:
        raise unknown_name_error("condition mode", mode, CONDITION_MODES)
    known = pipeline.conditions
    info: dict[str, Any] = {"mode": mode, "rule": CONDITION_RULES[mode],
                            "null_embedding": null_embedding_kind(pipeline)}
    if mode == "null":
        return [NULL_CONDITION] * len(records), info
    where = f"the model {pipeline.model_path}" if pipeline.model_path else "the model"
    if not known:
        raise UserError(f"{where} has no conditions (its diffusion model was trained without them), so "
                        f"--condition-mode {mode} is impossible.",
                        hint="Use --condition-mode null (stochastic generation).")
    missing = sorted({r.class_name for r in records} - set(known))
    if missing:
        raise UserError(f"The dataset's class(es) {', '.join(missing)} are not conditions of {where}.",
                        hint=f"The model knows: {', '.join(known)}. Evaluate on the data the model was trained "
                             "for, or use --condition-mode null.")
    if mode == "class":
        return [r.class_name for r in records], info
    mapping = shuffled_classes(dataset_classes, known)
    info["mapping"] = mapping
    return [mapping[r.class_name] for r in records], info


# --------------------------------------------------------------------------------------------
# Settings, keys and the work folder


def resolved_sampling(pipeline, config: GenerationEvalConfig):
    overrides = {k: getattr(config, k) for k in ("sampler", "steps", "eta", "guidance", "ddim_spacing")
                 if getattr(config, k) is not None}
    if "sampler" in overrides:
        overrides["sampler"] = str(overrides["sampler"]).lower()
    return replace(pipeline.default_settings(), **overrides).resolved(pipeline.timesteps)


def run_key(pipeline, dataset_digest: str, config: GenerationEvalConfig, sampling, frames: int,
            fit: str) -> dict[str, Any]:
    """What every generated video of this evaluation shares (not the number of videos, the
    device or the batch size: none of them changes a video)."""
    return {"model_digest": pipeline.digest, "ema": pipeline.ema, "dataset_digest": dataset_digest,
            "split": config.split, "condition_mode": config.condition_mode, "seed": config.seed,
            "frames": frames, "fit": fit, "resolution": pipeline.resolution, **sampling.to_dict(),
            **({"precision": pipeline.precision} if pipeline.precision != "fp32" else {})}


def key_hash(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:10]


def default_work_dir(pipeline, key: dict[str, Any]) -> Path:
    """./lfdm-eval/<model folder name>-<hash of the run key>/"""
    from lfdm_cli.evaluation.selection import model_name

    name = re.sub(r"[^A-Za-z0-9._-]+", "-", model_name(pipeline.model_path)).strip("-.") or "model"
    return DEFAULT_WORK_ROOT / f"{name}-{key_hash(key)}"


def video_key(common: dict[str, Any], video_id: str, condition: str, seed: int) -> dict[str, Any]:
    return {**common, "video": video_id, "condition": condition, "seed": seed}


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@dataclass
class VideoJob:
    record: Any  # VideoRecord
    condition: str
    seed: int
    key: dict[str, Any]
    path: Path
    sidecar: Path

    def is_done(self) -> bool:
        if not self.path.is_file():
            return False
        recorded = _read_json(self.sidecar)
        return recorded is not None and recorded.get("job") == self.key


# --------------------------------------------------------------------------------------------
# Generating


def input_images(pipeline, ds, records) -> list[np.ndarray]:
    """Frame 0 of every record, fitted to the model's resolution as uint8 (H, W, 3)."""
    from lfdm_cli.io import fit_frames

    return [fit_frames(np.asarray(ds.load(r)[0]), pipeline.resolution, pipeline.fit) for r in records]


def generate_jobs(pipeline, ds, jobs: list[VideoJob], *, sampling, frames: int, batch_size: int,
                  condition_info: dict[str, Any], progress: bool = True) -> None:
    """Generate and write every job, `batch_size` videos per device batch."""
    from lfdm_cli import __version__
    from lfdm_cli.atomic import write_text_atomic
    from lfdm_cli.data.dataset import save_video_array
    from lfdm_cli.io import to_uint8
    from lfdm_cli.progress import Progress

    info = {"device": str(pipeline.device), "torch": torch.__version__}
    if pipeline.device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(pipeline.device)
    else:
        info["threads"] = torch.get_num_threads()
    with Progress(len(jobs), "generating", unit="video", enabled=progress) as bar:
        for start in range(0, len(jobs), batch_size):
            batch = jobs[start:start + batch_size]
            images = torch.from_numpy(np.stack(input_images(pipeline, ds, [j.record for j in batch])))
            images = images.permute(0, 3, 1, 2).float().div_(255.0).to(pipeline.device)
            result = pipeline.generate(images, [j.condition for j in batch], frames=frames,
                                       sampler=sampling.sampler, steps=sampling.steps, eta=sampling.eta,
                                       guidance=sampling.guidance, ddim_spacing=sampling.ddim_spacing,
                                       seeds=[j.seed for j in batch])
            n = len(batch)
            per_video = {k: round(v / n, 5) for k, v in result.timings.items()}
            for i, job in enumerate(batch):
                if job.sidecar.exists():
                    job.sidecar.unlink()  # a stale sidecar must never describe the new video
                save_video_array(job.path, to_uint8(result.videos[i]))
                r = job.record
                sidecar = {
                    "format": SIDECAR_FORMAT,
                    "video": job.path.name,
                    "source_video": r.id,
                    "class": r.class_name,
                    "subject": r.subject,
                    "condition": job.condition,
                    "condition_mode": condition_info["mode"],
                    "seed": job.seed,
                    "frames": frames,
                    **sampling.to_dict(),
                    "resolution": pipeline.resolution,
                    "fit": pipeline.fit,
                    "precision": pipeline.precision,
                    "model": {"path": str(Path(pipeline.model_path).resolve()) if pipeline.model_path else None,
                              "digest": pipeline.digest, "ema": pipeline.ema},
                    "timings": {"batch_size": n, "batch": {k: round(v, 5) for k, v in result.timings.items()},
                                "per_video": per_video},
                    **info,
                    "lfdm_version": __version__,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "job": job.key,
                }
                write_text_atomic(job.sidecar, json.dumps(sidecar, indent=2, default=str) + "\n")
            bar.update(n)
            del result


# --------------------------------------------------------------------------------------------
# Scoring


def real_clip(video: np.ndarray, frames: int, size: int, fit: str) -> np.ndarray:
    """The real clip a generated video is compared with (see REAL_CLIPS), at the model's size."""
    from lfdm_cli.io import fit_frames
    from lfdm_cli.training.clips import uniform_indices

    clip = np.asarray(video[uniform_indices(video.shape[0], frames)])
    if clip.shape[1:3] != (size, size):
        clip = fit_frames(clip, size, fit)
    return np.ascontiguousarray(clip)


def _mean_std(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "std": None}
    a = np.asarray(values, np.float64)
    return {"mean": float(a.mean()), "std": float(a.std())}


def real_features_cache(ds, i3d_model, *, frames: int, size: int, fit: str) -> Path | None:
    """Where the real clips' I3D features of one dataset split and clip setting are kept, so the
    evaluations of several samplers or models on the same data compute them once (None for a
    network without a weights hash)."""
    from lfdm_cli.evaluation.selection import dataset_digest
    from lfdm_cli.metrics.i3d import cache_dir

    weights = getattr(i3d_model, "weights_sha256", None)
    if not weights:
        return None
    key = {"dataset_digest": dataset_digest(ds.path), "frames": frames, "size": size, "fit": fit,
           "real_clips": REAL_CLIPS, "i3d_weights_sha256": weights}
    return cache_dir() / "real-features" / f"{key_hash(key)}.npz"


def _load_feature_cache(path: Path | None) -> dict[str, np.ndarray]:
    if path is None or not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as data:
            return {str(i): f for i, f in zip(data["ids"], data["features"])}
    except (OSError, ValueError, KeyError):
        return {}  # a damaged cache is simply recomputed


def real_features(ds, jobs: list[VideoJob], i3d_model, *, frames: int, size: int, fit: str, batch_size: int,
                  device, progress: bool = True) -> tuple[np.ndarray, int]:
    """I3D features (N, 400) of the jobs' real clips, and how many came from the cache."""
    from lfdm_cli.atomic import atomic_path
    from lfdm_cli.metrics.fvd import extract_features

    path = real_features_cache(ds, i3d_model, frames=frames, size=size, fit=fit)
    known = _load_feature_cache(path)
    missing = [j for j in jobs if j.record.id not in known]
    if missing:
        clips = (real_clip(ds.load(j.record), frames, size, fit) for j in missing)
        feats = extract_features(clips, i3d_model, batch_size=batch_size, device=device, total=len(missing),
                                 desc="I3D real", progress=progress)
        known.update({j.record.id: f for j, f in zip(missing, feats)})
        if path is not None:
            try:
                with atomic_path(path) as tmp, open(tmp, "wb") as fh:
                    ids = sorted(known)
                    np.savez(fh, ids=np.array(ids), features=np.stack([known[i] for i in ids]))
            except OSError:
                pass  # only a cache: the next run computes them again
    return np.stack([known[j.record.id] for j in jobs]), len(jobs) - len(missing)


def score_videos(pipeline, ds, jobs: list[VideoJob], i3d_model, *, frames: int, batch_size: int,
                 device, progress: bool = True) -> tuple[dict[str, Any], list[dict[str, Any]], list[str]]:
    """FVD, KVD, cFVD, sFVD, first-frame SSIM and time per video of finished jobs."""
    from lfdm_cli.metrics.frame_metrics import first_frame_ssim
    from lfdm_cli.metrics.fvd import GROUPED_NAMES, extract_features, fvd_scores

    size, fit = pipeline.resolution, pipeline.fit
    per_video: list[dict[str, Any]] = []

    def fake_clips() -> Iterator[np.ndarray]:
        for job in jobs:
            clip = np.load(job.path, allow_pickle=False)
            if clip.shape[0] != frames:
                raise UserError(f"{job.path} holds {clip.shape[0]} frames, expected {frames}.",
                                hint="Delete it (or the work folder) and run again.")
            image = input_images(pipeline, ds, [job.record])[0]
            sidecar = _read_json(job.sidecar) or {}
            timing = (sidecar.get("timings") or {}).get("per_video") or {}
            per_video.append({"id": job.record.id, "class": job.record.class_name, "subject": job.record.subject,
                              "condition": job.condition, "seed": job.seed,
                              "first_frame_ssim": first_frame_ssim(clip, image),
                              "seconds": timing.get("total_s"),
                              "timings": timing, "device": sidecar.get("device")})
            yield clip

    real, cached = real_features(ds, jobs, i3d_model, frames=frames, size=size, fit=fit, batch_size=batch_size,
                                 device=device, progress=progress)
    fake = extract_features(fake_clips(), i3d_model, batch_size=batch_size, device=device, total=len(jobs),
                            desc="I3D generated", progress=progress)

    scores = fvd_scores(real, fake)
    warnings = list(scores.pop("warnings"))
    groups = {"class": [j.record.class_name for j in jobs], "subject": [j.record.subject for j in jobs]}
    for by, name in GROUPED_NAMES.items():
        try:
            grouped = fvd_scores(real, fake, by=by, real_groups=groups[by], fake_groups=groups[by], kvd=False)
        except UserError as exc:
            scores[name] = None
            warnings.append(f"{name} not computed: {exc.message}")
            continue
        scores[name] = grouped[name]
        warnings += [w for w in grouped["warnings"] if w not in warnings]

    scores["first_frame_ssim"] = _mean_std([v["first_frame_ssim"] for v in per_video])
    seconds = [v["seconds"] for v in per_video if v["seconds"] is not None]
    parts = {k: [v["timings"][k] for v in per_video if k in v["timings"]]
             for k in ("encode_s", "sample_s", "decode_s")}
    devices = sorted({str(v["device"]) for v in per_video if v["device"]})
    scores["time_per_video_s"] = {"mean": float(np.mean(seconds)) if seconds else None,
                                  **{k: float(np.mean(v)) if v else None for k, v in parts.items()},
                                  "devices": devices}
    if len(devices) > 1:
        warnings.append(f"The videos were generated on different devices ({', '.join(devices)}): the time per "
                        "video mixes them.")
    scores["real_features_cached"] = cached
    return scores, per_video, warnings


# --------------------------------------------------------------------------------------------
# The whole evaluation


def evaluate_generation(model: str | Path | None, data: str | Path, config: GenerationEvalConfig, *,
                        work_dir: str | Path | None = None, i3d_weights: str | Path | None = None,
                        device: str | torch.device = "cpu", progress: bool = True,
                        log=None) -> dict[str, Any]:
    """Generate what is missing, then score. Returns {"scores", "settings", "per_video",
    "warnings"} and writes it to WORK_DIR/scores.json too. `log(message)` reports progress
    messages (the CLI prints them to stderr)."""
    from lfdm_cli.atomic import write_text_atomic
    from lfdm_cli.evaluation.selection import describe_dataset, model_name, open_split, select_videos
    from lfdm_cli.metrics import i3d
    from lfdm_cli.metrics.fvd import score_settings
    from lfdm_cli.pipeline import GenerationPipeline

    say = log or (lambda message: None)
    if config.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {config.batch_size}.")
    if config.seed < 0:
        raise UserError(f"--seed must be 0 or more, got {config.seed}.")
    if config.condition_mode not in CONDITION_MODES:
        raise unknown_name_error("condition mode", config.condition_mode, CONDITION_MODES)
    device = torch.device(device)
    ds = open_split(data, config.split)
    records = select_videos(ds, config.videos)
    pipeline = GenerationPipeline.from_folder(model, device=device, ema=config.ema, precision=config.precision)
    frames = int(config.frames or pipeline.default_frames)
    if frames < i3d.MIN_FRAMES:
        raise UserError(f"FVD needs clips of at least {i3d.MIN_FRAMES} frames (the I3D network's minimum); this "
                        f"evaluation would generate {frames}.",
                        hint=f"Pass --frames {i3d.MIN_FRAMES} or more (16 is the usual FVD clip length).")
    sampling = resolved_sampling(pipeline, config)
    warnings: list[str] = []
    if frames != pipeline.default_frames:
        warnings.append(f"Generating {frames} frames; the model was trained on {pipeline.default_frames}-frame clips.")
    conditions, condition_info = conditions_for(config.condition_mode, records, ds.classes, pipeline)
    spec = pipeline.dm.spec
    if config.condition_mode == "null" and spec.conditions and spec.diffusion.null_cond_prob == 0:
        warnings.append("The model was trained with null_cond_prob 0: it never saw the null condition, so null-"
                        "condition videos show what an untrained embedding gives.")
    # Load the feature network before generating anything: missing weights must not cost hours.
    i3d_model = i3d.load_i3d(i3d_weights, device=device)

    data_info = describe_dataset(ds, config.split, records)
    common = run_key(pipeline, data_info["digest"], config, sampling, frames, pipeline.fit)
    work = Path(work_dir) if work_dir is not None else default_work_dir(pipeline, common)
    videos_dir = work / VIDEOS_DIR
    videos_dir.mkdir(parents=True, exist_ok=True)
    jobs = []
    for i, (record, condition) in enumerate(zip(records, conditions)):
        seed = config.seed + i
        path = videos_dir / f"{record.id}.npy"
        jobs.append(VideoJob(record=record, condition=condition, seed=seed,
                             key=video_key(common, record.id, condition, seed), path=path,
                             sidecar=path.with_suffix(".json")))
    pending = [j for j in jobs if not j.is_done()]
    replaced = [j for j in pending if j.sidecar.exists()]
    if replaced:
        warnings.append(f"{len(replaced)} video(s) in {videos_dir} were made with other settings and are "
                        "generated again.")
    say(f"{len(jobs)} videos: {len(jobs) - len(pending)} already in {work}, {len(pending)} to generate "
        f"({sampling.sampler} {sampling.steps} steps, {frames} frames, {config.condition_mode} conditions).")
    start = time.perf_counter()
    if pending:
        generate_jobs(pipeline, ds, pending, sampling=sampling, frames=frames, batch_size=config.batch_size,
                      condition_info=condition_info, progress=progress)
    generation_s = time.perf_counter() - start

    scores, per_video, score_warnings = score_videos(pipeline, ds, jobs, i3d_model, frames=frames,
                                                     batch_size=config.batch_size, device=device,
                                                     progress=progress)
    warnings += score_warnings
    padded = [{"id": j.record.id, "frames": j.record.frames} for j in jobs if j.record.frames < frames]
    if padded:
        warnings.append(f"{len(padded)} real video(s) have fewer than {frames} frames; their clips repeat the "
                        "last frame.")
    extra = {
        "stride": None,
        "model": {"path": str(Path(pipeline.model_path).resolve()) if pipeline.model_path else None,
                  "name": model_name(pipeline.model_path), "digest": pipeline.digest, "ema": pipeline.ema,
                  "resolution": pipeline.resolution, "fit": pipeline.fit, "conditions": pipeline.conditions},
        "data": data_info,
        "generation": {**sampling.to_dict(), "frames": frames, "seed": config.seed, "precision": pipeline.precision,
                       "seeds": "video i of the selection uses seed + i", "conditions": condition_info,
                       "batch_size": config.batch_size},
        "real_clips": REAL_CLIPS,
        "fake_clips": FAKE_CLIPS,
        "padded_real_videos": padded,
        "cfvd_groups": CFVD_GROUPS,
        "sfvd_groups": SFVD_GROUPS,
        "first_frame_ssim": FIRST_FRAME,
        "time_per_video": TIME_RULE,
        "work_dir": str(work.resolve()),
        "videos_generated": len(pending),
        "videos_reused": len(jobs) - len(pending),
        "real_features_cached": scores.pop("real_features_cached"),
        "generation_seconds": round(generation_s, 2),
        "device": str(device),
        "batch_size": config.batch_size,
    }
    settings = score_settings(frames=frames, stride=1, weights_sha256=getattr(i3d_model, "weights_sha256", None),
                              weights_source=getattr(i3d_model, "weights_source", None),
                              n_real=scores["n_real"], n_fake=scores["n_fake"], extra=extra)
    result = {"scores": scores, "settings": settings, "per_video": per_video, "warnings": warnings}
    write_text_atomic(work / SCORES_FILE, json.dumps(result, indent=2, default=str) + "\n")
    return result


# --------------------------------------------------------------------------------------------
# Table


def _num(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _grouped(g: dict[str, Any] | None) -> str:
    if not g or g.get("mean") is None:
        return "n/a"
    return f"{g['mean']:.1f} ± {g['std']:.1f}"


TABLE_HEADER = ("| model | sampler | steps | condition | videos | frames | FVD ↓ | cFVD ↓ | sFVD ↓ | KVD ↓ "
                "| first-frame SSIM ↑ | s / video |")
TABLE_RULE = "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"


def generation_row(result: dict[str, Any]) -> str:
    s, st = result["scores"], result["settings"]
    g = st["generation"]
    ff = s["first_frame_ssim"]
    t = s["time_per_video_s"]
    device = ", ".join(t.get("devices") or []) or st.get("device", "")
    return (f"| {st['model']['name']} | {g['sampler']} | {g['steps']} | {g['conditions']['mode']} | "
            f"{s['n_fake']} | {g['frames']} | {_num(s['fvd'], 1)} | {_grouped(s.get('cfvd'))} | "
            f"{_grouped(s.get('sfvd'))} | {_num(s.get('kvd'), 2)} | "
            f"{_num(ff['mean'], 3)} ± {_num(ff['std'], 3)} | {_num(t['mean'], 2)} ({device}) |")


def generation_table(result: dict[str, Any]) -> str:
    """The scores as a markdown table in the layout of the paper's Tables 1 and 4."""
    return "\n".join([TABLE_HEADER, TABLE_RULE, generation_row(result)])
