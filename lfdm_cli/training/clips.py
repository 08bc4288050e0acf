"""Training clips for stage two: which K frames of a video form a clip, and the clip's colour jitter.

Frame choice follows the authors' DM datasets (DM/datasets_mug.py, datasets_mhad.py,
datasets_natops.py; identical in all three). For a video of T frames and clips of K frames:

- `uniform`: K evenly spaced indices, floor(linspace(0, T-1, K)).
- `random`: the uniform indices, each inner one (1..K-2) moved by an integer drawn uniformly from
  [1 - gap before it, gap after it), then sorted. The first (0) and last (T-1) stay; every inner
  index stays strictly between its uniform neighbours, so index 0 remains the first.
- `very_random`: K draws with replacement from 0..T-1, sorted, the first set to 0.
- A video shorter than K (uniform and random): all its frames, the last one repeated to K.
  `very_random` draws with replacement and needs no padding.

In every mode the clip starts at frame 0 of the video; that frame is the reference x0 whose
latent conditions the diffusion model and from which all K flows are measured. (The flow cache
relies on this: see lfdm_cli.training.flow_cache.)

Colour jitter, as the reference applies it to a clip: one brightness, contrast, saturation and hue
factor per clip (brightness in [1 - 64/255, 1 + 64/255], contrast and saturation in [0.75, 1.25],
hue shift in [-0.04, 0.04]), applied to every frame in that fixed order, each as PIL computes it
(the reference calls torchvision's PIL functions). The reference jitters the source frames before
resizing them to the training size; our datasets store frames at the training size, so the
jitter applies to those.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance

from lfdm_cli.data.dataset import Dataset, VideoRecord
from lfdm_cli.errors import UserError, unknown_name_error
from lfdm_cli.lfae.transforms import adjust_hue as adjust_hue_pil

SAMPLING_MODES = ("uniform", "random", "very_random")

# The reference's jitter strengths (its DM datasets hard-code them).
JITTER_BRIGHTNESS = 64.0 / 255.0
JITTER_CONTRAST = 0.25
JITTER_SATURATION = 0.25
JITTER_HUE = 0.04


def _check(total: int, num: int, mode: str) -> None:
    if mode not in SAMPLING_MODES:
        raise unknown_name_error("frame sampling mode", mode, SAMPLING_MODES)
    if total < 1 or num < 1:
        raise ValueError(f"need at least one frame and one clip frame, got total={total}, num={num}")


def uniform_indices(total: int, num: int) -> np.ndarray:
    """floor(linspace(0, total-1, num)) for total >= num; else 0..total-1 padded with the last."""
    if total >= num:
        return np.linspace(0, total - 1, num, dtype=np.int64)
    return np.pad(np.arange(total, dtype=np.int64), (0, num - total), mode="edge")


def clip_indices(total: int, num: int, mode: str, rng: np.random.Generator) -> np.ndarray:
    """The (num,) int64 frame indices of one clip of a `total`-frame video (see module doc)."""
    _check(total, num, mode)
    if mode == "very_random":
        idx = np.sort(rng.choice(total, size=num, replace=True).astype(np.int64))
        idx[0] = 0
        return idx
    idx = uniform_indices(total, num)
    if mode == "random" and total >= num:
        base = idx.copy()
        steps = base[1:] - base[:-1]
        for i in range(1, num - 1):
            idx[i] = base[i] + int(rng.integers(1 - steps[i - 1], steps[i]))
        idx = np.sort(idx)
    return idx


def frames_used(total: int, num: int, mode: str) -> np.ndarray:
    """Every frame index that `clip_indices(total, num, mode, ...)` can return, sorted."""
    _check(total, num, mode)
    if mode == "very_random":
        return np.arange(total, dtype=np.int64)
    base = uniform_indices(total, num)
    if mode == "uniform" or total < num:
        return np.unique(base)
    used = {int(base[0]), int(base[-1])}
    for i in range(1, num - 1):
        # base[i] + [1 - gap before, gap after) = [base[i-1] + 1, base[i+1] - 1]
        used.update(range(int(base[i - 1]) + 1, int(base[i + 1])))
    return np.array(sorted(used), dtype=np.int64)


# ----------------------------------------------------------------------------- colour jitter

@dataclass(frozen=True)
class JitterFactors:
    brightness: float
    contrast: float
    saturation: float
    hue: float

    @classmethod
    def draw(cls, rng: np.random.Generator) -> "JitterFactors":
        """One clip's factors, drawn in the reference's order."""
        b = rng.uniform(max(0.0, 1 - JITTER_BRIGHTNESS), 1 + JITTER_BRIGHTNESS)
        c = rng.uniform(max(0.0, 1 - JITTER_CONTRAST), 1 + JITTER_CONTRAST)
        s = rng.uniform(max(0.0, 1 - JITTER_SATURATION), 1 + JITTER_SATURATION)
        h = rng.uniform(-JITTER_HUE, JITTER_HUE)
        return cls(float(b), float(c), float(s), float(h))

    def as_array(self) -> np.ndarray:
        return np.array([self.brightness, self.contrast, self.saturation, self.hue], dtype=np.float64)


def apply_jitter(frames: np.ndarray, factors: JitterFactors) -> np.ndarray:
    """Brightness, contrast, saturation, then hue on every frame of uint8 (K, H, W, 3)."""
    out = np.empty_like(frames)
    for t, frame in enumerate(frames):
        im = Image.fromarray(np.ascontiguousarray(frame), "RGB")
        im = ImageEnhance.Brightness(im).enhance(factors.brightness)
        im = ImageEnhance.Contrast(im).enhance(factors.contrast)
        im = ImageEnhance.Color(im).enhance(factors.saturation)
        im = adjust_hue_pil(im, factors.hue)
        out[t] = np.asarray(im)
    return out


def clip_color_jitter(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The reference's clip jitter: one set of factors from `rng` for all frames."""
    return apply_jitter(frames, JitterFactors.draw(rng))


# ----------------------------------------------------------------------------- the dataset

class ClipDataset:
    """One clip per training video per epoch (the reference's epoch is one pass over the videos).

    Item: frames float32 (K, 3, H, W) in [0, 1] (jittered when `color_jitter`), label (class
    index = condition row), video (index into `videos`), indices (K,) frame indices; with
    `targets` (a FlowCache) also flow (K, h, w, 2) and occlusion (K, 1, h, w) of the clip.
    """

    def __init__(self, dataset: Dataset, num_frames: int, sampling: str, color_jitter: bool):
        if sampling not in SAMPLING_MODES:
            raise unknown_name_error("frame sampling mode", sampling, SAMPLING_MODES)
        if not len(dataset):
            raise UserError(f"The dataset in {dataset.path} has no videos to train on.")
        self.dataset = dataset
        self.videos: list[VideoRecord] = list(dataset.videos)
        self.num_frames = num_frames
        self.sampling = sampling
        self.color_jitter = color_jitter
        self.targets: Any = None   # set to a FlowCache once it is built

    def __len__(self) -> int:
        return len(self.videos)

    def frames_used(self, record: VideoRecord) -> np.ndarray:
        return frames_used(record.frames, self.num_frames, self.sampling)

    def get(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        record = self.videos[index]
        video = self.dataset.load(record, mmap=True)
        idx = clip_indices(video.shape[0], self.num_frames, self.sampling, rng)
        frames = np.ascontiguousarray(video[idx])
        if self.color_jitter:
            frames = clip_color_jitter(frames, rng)
        item = {
            "frames": np.ascontiguousarray(frames.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255.0),
            "label": np.int64(self.dataset.label(record)),
            "video": np.int64(index),
            "indices": idx,
        }
        if self.targets is not None:
            flow, occlusion = self.targets.lookup(record, idx)
            item["flow"], item["occlusion"] = flow, occlusion
        return item


__all__ = ["ClipDataset", "JitterFactors", "SAMPLING_MODES", "apply_jitter", "clip_color_jitter", "clip_indices",
           "frames_used", "uniform_indices"]
