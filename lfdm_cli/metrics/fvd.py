"""FVD, KVD and their per-class / per-subject variants (cFVD, sFVD) from Kinetics-400 I3D logits.

Protocol (the original FVD code's, with its resize made exact):

1. Clip: the first `frames` frames of a video, every `stride`-th (uint8 RGB).
2. Resize every frame to 224x224 with bilinear interpolation, half-pixel centres
   (align_corners=False) and antialiasing (which only acts on a shrinking dimension), computed
   in float64 on values 0..255 (`torch.nn.functional.interpolate(..., mode="bilinear",
   align_corners=False, antialias=True)`; identical to `jax.image.resize(..., "bilinear")`).
   The aspect ratio is not kept, as in the original code.
3. Scale with `2 * x / 255 - 1` and round once to float32.
4. The I3D logits (400-d, pre-softmax, averaged over time) are the features.
5. FVD = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), unbiased (N-1) covariances, float64.

The matrix square root is never formed: Tr (S1 S2)^(1/2) is the sum of the singular values of
A1 A2^T with A = (F - mu) / sqrt(N - 1) (when a set has at most 400 videos, where S1 S2 is
singular and `sqrtm` is ill-posed), or Tr (R S2 R)^(1/2) with R = S1^(1/2), both by symmetric
eigen/singular value decompositions: the result is always real and finite.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lfdm_cli.errors import UserError

FEATURE_DIM = 400
I3D_SIZE = 224
RESIZE_METHOD = ("bilinear, align_corners=False (half-pixel centres), antialias=True, float64 on "
                 "0..255 (torch F.interpolate = jax.image.resize 'bilinear'); then 2*x/255-1 as float32")
KVD_METHOD = ("unbiased MMD^2 with the polynomial kernel (x.y/d + 1)^3 on I3D logits (as KID, "
              "Binkowski et al. 2018), unscaled")


# --------------------------------------------------------------------------------------------
# Preprocessing and features

def preprocess_clip(clip: np.ndarray | torch.Tensor, size: int = I3D_SIZE,
                    device: str | torch.device | None = None) -> torch.Tensor:
    """uint8 (T, H, W, 3) RGB -> float32 (3, T, size, size) in [-1, 1], on `device`.

    Bilinear resize with half-pixel centres and antialiasing (`F.interpolate(mode="bilinear",
    align_corners=False, antialias=True)`) in float64 on 0..255, then `2*x/255 - 1` rounded
    once to float32. Frames already size x size are not resampled.
    """
    if not isinstance(clip, torch.Tensor):
        clip = np.asarray(clip)
        if not (clip.flags.c_contiguous and clip.flags.writeable):  # torch cannot wrap either
            clip = np.array(clip, copy=True)
        clip = torch.from_numpy(clip)
    x = clip
    if x.dim() != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected a (T, H, W, 3) RGB clip, got shape {tuple(x.shape)}")
    if x.dtype != torch.uint8:
        raise ValueError(f"expected a uint8 clip, got {x.dtype}")
    x = x.to(device).permute(0, 3, 1, 2).to(torch.float64)  # (T, 3, H, W)
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    x = (2.0 * x / 255.0 - 1.0).to(torch.float32)
    return x.permute(1, 0, 2, 3).contiguous()


def extract_features(clips: Iterable[np.ndarray], model: torch.nn.Module, *, batch_size: int = 4,
                     device: str | torch.device | None = None, total: int | None = None,
                     desc: str = "I3D features", progress: bool = True) -> np.ndarray:
    """I3D logits (N, 400) float32 of uint8 (T, H, W, 3) clips, `batch_size` clips per forward.

    `clips` may be a lazy iterable (a generator that reads videos one by one): only one batch is
    held in memory. Clips of one batch must have the same number of frames.
    """
    from lfdm_cli.progress import Progress

    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}.")
    if device is None:
        first = next(iter([*model.parameters(), *model.buffers()]), None)
        device = first.device if first is not None else torch.device("cpu")
    if total is None and hasattr(clips, "__len__"):
        total = len(clips)  # type: ignore[arg-type]
    feats: list[np.ndarray] = []
    batch: list[torch.Tensor] = []

    def flush() -> None:
        x = torch.stack(batch).contiguous(memory_format=torch.channels_last_3d)
        with torch.inference_mode():
            feats.append(model(x).float().cpu().numpy())
        bar.update(len(batch))
        batch.clear()

    with Progress(total, desc, unit="clip", enabled=progress) as bar:
        for clip in clips:
            batch.append(preprocess_clip(clip, device=device))
            if len(batch) == batch_size:
                flush()
        if batch:
            flush()
    if not feats:
        return np.zeros((0, FEATURE_DIM), np.float32)
    return np.concatenate(feats, axis=0)


# --------------------------------------------------------------------------------------------
# Fréchet distance

def _as_features(feats: Any, name: str) -> np.ndarray:
    f = np.asarray(feats, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"{name}: features must be (N, D), got shape {f.shape}")
    if f.shape[0] < 2:
        raise UserError(f"{name}: FVD needs at least 2 videos per set (a covariance), got {f.shape[0]}.")
    if not np.isfinite(f).all():
        raise ValueError(f"{name}: features contain NaN or inf")
    return f


def _centred_factor(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mu, A) with A = (F - mu) / sqrt(N - 1), so that the unbiased covariance is A^T A."""
    mu = f.mean(axis=0)
    return mu, (f - mu) / math.sqrt(f.shape[0] - 1)


def _clip_noise(w: np.ndarray) -> np.ndarray:
    # Eigenvalues below the rounding noise of the largest one are zero in exact arithmetic (the
    # covariances of N < D videos are singular); their square roots would add up to visible bias.
    tol = max(float(w.max(initial=0.0)), 0.0) * len(w) * np.finfo(np.float64).eps
    return np.where(w > tol, w, 0.0)


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(_clip_noise(w))) @ v.T


def trace_sqrt_product(s1: np.ndarray, s2: np.ndarray) -> float:
    """Tr (S1 S2)^(1/2) for symmetric PSD S1, S2, as Tr (R S2 R)^(1/2) with R = S1^(1/2).

    R S2 R is symmetric PSD with the eigenvalues of S1 S2, so symmetric eigendecompositions give
    a real answer even when S1 S2 is singular (eigenvalues at rounding-noise level count as 0).
    """
    r = _psd_sqrt(np.asarray(s1, np.float64))
    m = r @ np.asarray(s2, np.float64) @ r
    w = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(_clip_noise(w)).sum())


def frechet_distance_from_stats(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """Fréchet distance between Gaussians (mu1, S1) and (mu2, S2), float64."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(s1, np.float64), np.asarray(s2, np.float64)
    value = float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt_product(s1, s2))
    # Negative only by rounding (the distance is >= 0 for PSD covariances).
    return max(value, 0.0)


def frechet_distance(feats1: Any, feats2: Any) -> float:
    """FVD between two feature sets (N1, D) and (N2, D), unbiased covariances, float64.

    With at most D videos in a set (the usual case: D = 400), Tr (S1 S2)^(1/2) is the nuclear
    norm of the small N1 x N2 matrix A1 A2^T (exact, no ill-posed square root); with more videos
    the D x D symmetric route (`trace_sqrt_product`) is cheaper. Never NaN or complex.
    """
    f1, f2 = _as_features(feats1, "set 1"), _as_features(feats2, "set 2")
    if f1.shape[1] != f2.shape[1]:
        raise ValueError(f"feature dimensions differ: {f1.shape[1]} vs {f2.shape[1]}")
    mu1, a1 = _centred_factor(f1)
    mu2, a2 = _centred_factor(f2)
    if min(len(f1), len(f2)) <= f1.shape[1]:
        tr_sqrt = float(np.linalg.svd(a1 @ a2.T, compute_uv=False).sum())
    else:
        tr_sqrt = trace_sqrt_product(a1.T @ a1, a2.T @ a2)
    value = float(np.sum((mu1 - mu2) ** 2) + np.sum(a1 * a1) + np.sum(a2 * a2) - 2.0 * tr_sqrt)
    return max(value, 0.0)


# --------------------------------------------------------------------------------------------
# Kernel distance (KVD)

def _poly_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    m, n = len(x), len(y)
    kxx, kyy, kxy = _poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1))
                 + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2.0 * kxy.mean())


def kernel_distance(feats1: Any, feats2: Any, *, max_subset_size: int = 1000, num_subsets: int = 100,
                    seed: int = 0) -> float:
    """KVD: unbiased MMD^2 with the cubic polynomial kernel k(x, y) = (x.y/d + 1)^3.

    Sets of at most `max_subset_size` videos use the full unbiased estimator (deterministic).
    Larger sets average it over `num_subsets` random subsets of min(N1, N2, max_subset_size)
    videos drawn from each set (as KID does), with a seeded generator. The unbiased estimator
    can be slightly negative when the distributions are equal; it is returned as is.
    """
    f1, f2 = _as_features(feats1, "set 1"), _as_features(feats2, "set 2")
    if max(len(f1), len(f2)) <= max_subset_size:
        return _mmd2_unbiased(f1, f2)
    size = min(len(f1), len(f2), max_subset_size)
    rng = np.random.default_rng(seed)
    values = [_mmd2_unbiased(f1[rng.choice(len(f1), size, replace=False)],
                             f2[rng.choice(len(f2), size, replace=False)]) for _ in range(num_subsets)]
    return float(np.mean(values))


# --------------------------------------------------------------------------------------------
# Grouped scores (cFVD per class, sFVD per subject / source image)

def grouped_fvd(real_feats: Any, real_groups: Sequence[Any], fake_feats: Any, fake_groups: Sequence[Any],
                *, min_videos: int = 2) -> dict[str, Any]:
    """FVD per group between the real and fake videos that share a group key.

    Returns {"mean", "std" (over groups, ddof=0), "n_groups", "groups": {key: {"fvd", "n_real",
    "n_fake"}}, "skipped": {key: reason}}. Groups with fewer than `min_videos` videos on either
    side, or present on one side only, are skipped and listed.
    """
    min_videos = max(min_videos, 2)
    real = np.asarray(real_feats, np.float64)
    fake = np.asarray(fake_feats, np.float64)
    if len(real_groups) != len(real) or len(fake_groups) != len(fake):
        raise ValueError("one group key per video is needed")
    real_idx: dict[str, list[int]] = {}
    fake_idx: dict[str, list[int]] = {}
    for i, g in enumerate(real_groups):
        if g is not None:
            real_idx.setdefault(str(g), []).append(i)
    for i, g in enumerate(fake_groups):
        if g is not None:
            fake_idx.setdefault(str(g), []).append(i)
    groups: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    for key in sorted(set(real_idx) | set(fake_idx)):
        nr, nf = len(real_idx.get(key, [])), len(fake_idx.get(key, []))
        if nr == 0 or nf == 0:
            skipped[key] = f"only in the {'fake' if nr == 0 else 'real'} set"
        elif min(nr, nf) < min_videos:
            skipped[key] = f"too few videos (real {nr}, fake {nf}; need {min_videos} each)"
        else:
            groups[key] = {"fvd": frechet_distance(real[real_idx[key]], fake[fake_idx[key]]),
                           "n_real": nr, "n_fake": nf}
    values = np.array([g["fvd"] for g in groups.values()], np.float64)
    return {
        "mean": float(values.mean()) if len(values) else None,
        "std": float(values.std()) if len(values) else None,
        "n_groups": len(groups),
        "groups": groups,
        "skipped": skipped,
    }


def small_sample_warning(n_real: int, n_fake: int, dim: int = FEATURE_DIM) -> str | None:
    """The warning to show when a set has fewer videos than the feature dimension."""
    n = min(n_real, n_fake)
    if n >= dim:
        return None
    return (f"FVD from {n_real} real and {n_fake} fake videos: fewer than the feature dimension "
            f"({dim}), so the covariances are singular and FVD is biased upwards and noisy; compare "
            "it only with scores computed from the same number of videos.")


def format_mean_std(mean: float | None, std: float | None, digits: int = 2) -> str:
    if mean is None:
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


# --------------------------------------------------------------------------------------------
# Scores with their settings

GROUPED_NAMES = {"class": "cfvd", "subject": "sfvd"}
FEATURE_DESCRIPTION = ("Kinetics-400 Inception-I3D (RGB) logits: 400-d, pre-softmax, mean over time "
                       "(the tensor the original FVD code reads)")


def check_groups(real_groups: Sequence[Any], fake_groups: Sequence[Any], by: str, min_videos: int = 2) -> None:
    """Raise a UserError unless some group has `min_videos` videos in both sets (checked before
    any feature is computed, so a mismatch costs no network time)."""
    def counts(groups: Sequence[Any]) -> dict[str, int]:
        c: dict[str, int] = {}
        for g in groups:
            if g is not None:
                c[str(g)] = c.get(str(g), 0) + 1
        return c

    real, fake = counts(real_groups), counts(fake_groups)
    if any(min(real[k], fake[k]) >= min_videos for k in set(real) & set(fake)):
        return
    raise UserError(
        f"--by {by}: no {by} has at least {min_videos} videos in both sets, so there is nothing to score.",
        hint=f"Real {by}s: {', '.join(sorted(real)[:8]) or '(none)'}; fake {by}s: "
             f"{', '.join(sorted(fake)[:8]) or '(none)'}. A folder of videos takes them from JSON "
             "sidecars beside each video (<name>.json with 'class'/'condition' and "
             "'subject'/'source_image').")


def fvd_scores(real_feats: Any, fake_feats: Any, *, by: str | None = None,
               real_groups: Sequence[Any] | None = None, fake_groups: Sequence[Any] | None = None,
               kvd: bool = True) -> dict[str, Any]:
    """FVD and KVD of two feature sets, plus cFVD (`by="class"`) or sFVD (`by="subject"`) from
    per-video group keys. Returns the scores, set sizes and a list of warnings to show."""
    real = np.asarray(real_feats, np.float64)
    fake = np.asarray(fake_feats, np.float64)
    result: dict[str, Any] = {"fvd": frechet_distance(real, fake), "n_real": len(real), "n_fake": len(fake)}
    if kvd:
        result["kvd"] = kernel_distance(real, fake)
    warnings: list[str] = []
    if (w := small_sample_warning(len(real), len(fake))) is not None:
        warnings.append(w)
    if by is not None:
        if by not in GROUPED_NAMES:
            raise UserError(f"--by {by}: choose 'class' or 'subject'.")
        if real_groups is None or fake_groups is None:
            raise ValueError("grouped scores need the group key of every video")
        check_groups(real_groups, fake_groups, by)
        grouped = grouped_fvd(real, real_groups, fake, fake_groups)
        if grouped["skipped"]:
            warnings.append(f"{GROUPED_NAMES[by]}: {len(grouped['skipped'])} {by}(s) left out "
                            f"({'; '.join(f'{k}: {v}' for k, v in list(grouped['skipped'].items())[:5])}).")
        if by == "subject" and min(min(g["n_real"], g["n_fake"]) for g in grouped["groups"].values()) < 10:
            warnings.append("sFVD groups hold very few videos each, so each per-subject FVD is noisy.")
        result[GROUPED_NAMES[by]] = grouped
    result["warnings"] = warnings
    return result


def score_settings(*, frames: int, stride: int, weights_sha256: str | None, n_real: int, n_fake: int,
                   weights_source: str | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything that makes two FVD values comparable, saved next to every score."""
    from lfdm_cli import __version__

    settings = {
        "n_real": n_real,
        "n_fake": n_fake,
        "frames": frames,
        "stride": stride,
        "input_size": I3D_SIZE,
        "resize": RESIZE_METHOD,
        "features": FEATURE_DESCRIPTION,
        "i3d_weights_sha256": (weights_sha256 or "")[:16],
        "i3d_weights_source": weights_source,
        "covariance": "unbiased (N-1), float64",
        "kvd": KVD_METHOD,
        "grouped_std": "population std (ddof=0) over groups",
        "lfdm_version": __version__,
        "torch_version": torch.__version__,
    }
    if extra:
        settings.update(extra)
    return settings
