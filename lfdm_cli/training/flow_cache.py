"""Stage-two flow targets from the frozen stage one, computed once and reused across epochs.

Why it is exact: every clip of every sampling mode starts at frame 0 of its video (see
lfdm_cli.training.clips), so each of its K targets is the flow (and occlusion) from frame 0 to
one frame t of the same video. That pair depends only on the video and t, never on which other
frames the clip holds. The cache therefore stores, per video, the flow and occlusion from frame 0
to every frame the sampling mode can pick (`uniform`: the K fixed ones; `random` and
`very_random`: all of them), and a clip's targets are rows gathered from it.

When it is not exact: colour jitter changes the frames the stage-one networks see, so the
reference's targets change with each clip's jitter factors. The cache holds the flows of the
unjittered frames; with jitter on, training uses those (motion measured between two frames that
receive the same colour change) while the conditioning latent z0 is still computed every step
from the jittered reference frame. `lfdm train dm --no-flow-cache` computes every target from the
jittered frames instead, as the reference does (and costs the stage-one pass on every step).
Targets gathered from the cache equal freshly computed ones up to float rounding (the frozen
networks see the frames in batches of a different composition).

Invalidation: a cache folder is keyed by the digest of the stage-one model (its configuration,
frame size and weights); each video's file also records that digest and the SHA-256 of the
video's frames file, and is recomputed when either differs. Layout:

    CACHE_ROOT/lfae-<digest>/<video id>.safetensors
        frames (N,) int64, sorted frame indices; flow (N, h, w, 2) float32 absolute sampling grids
        from frame 0 to each; occlusion (N, 1, h, w) float32 in [0, 1]
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from lfdm_cli.atomic import atomic_path
from lfdm_cli.data.dataset import Dataset, VideoRecord
from lfdm_cli.errors import RunFailure, UserError
from lfdm_cli.modelfolder import ModelFolder
from lfdm_cli.progress import Progress
from lfdm_cli.hashing import file_sha256

CACHE_FORMAT = "lfdm-flow-cache/1"
LFAE_PART = "lfae"


def lfae_digest(folder: ModelFolder) -> str:
    """Identifies a stage-one model: its configuration, frame size and weights (16 hex digits).

    Unlike `ModelFolder.digest`, other parts of the folder (a diffusion model) do not count, and
    the weights are hashed by value (name, dtype, shape, bytes): safetensors writes its header
    keys in no fixed order, so the same weights saved twice need not give the same file bytes."""
    h = hashlib.sha256()
    config = {"resolution": folder.meta.get("resolution"), "lfae": folder.meta.get("lfae")}
    h.update(json.dumps(config, sort_keys=True).encode())
    file = folder.part_path(LFAE_PART)
    if not file.is_file():
        raise UserError(f"Model folder {folder.path} has no stage-one weights ({file.name} is missing).",
                        hint="Pass the model folder written by `lfdm train lfae` or `lfdm convert lfae`.")
    for name, tensor in sorted(folder.load_tensors(LFAE_PART, dtype=None).items()):
        h.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        h.update(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]




def video_targets(lfae, frames: np.ndarray, indices: np.ndarray, device: torch.device,
                  chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Flow (N, h, w, 2) and occlusion (N, 1, h, w) from frames[0] to frames[indices] (uint8
    (T, H, W, 3) video), in float32 on the CPU; the frozen networks see `chunk_size` frames at a time."""
    to_tensor = lambda a: torch.from_numpy(np.array(a)).to(device).permute(0, 3, 1, 2).float().div_(255.0)
    source = to_tensor(frames[:1])
    driving = to_tensor(frames[indices]).unsqueeze(0)
    with torch.no_grad(), torch.autocast(device_type=device.type, enabled=False):
        flow, occlusion = lfae.flow_and_occlusion(source, driving, chunk_size=chunk_size)
    if occlusion is None:
        raise UserError("The stage-one model estimates no occlusion map, but stage two diffuses flow and "
                        "occlusion together.",
                        hint="Use a stage-one model with estimate_occlusion_map: true (as every paper recipe).")
    return flow[0].float().cpu(), occlusion[0].float().cpu()


@dataclass
class CachePlan:
    """One video's state in the cache: its frames file's hash, what its cache file holds (None:
    nothing valid) and the needed frames it lacks."""

    record: VideoRecord
    video_sha256: str
    have: dict[str, torch.Tensor] | None
    missing: np.ndarray


class FlowCache:
    """The per-video target files of one stage-one model under `root` (see the module doc)."""

    def __init__(self, root: str | Path, digest: str):
        self.digest = digest
        self.folder = Path(root) / f"lfae-{digest}"

    def path(self, record: VideoRecord) -> Path:
        return self.folder / f"{record.id}.safetensors"

    # -- building -------------------------------------------------------------------------------

    def _existing(self, record: VideoRecord, video_sha: str) -> dict[str, torch.Tensor] | None:
        """The video's cached tensors if they belong to this model and these frames."""
        file = self.path(record)
        if not file.is_file():
            return None
        try:
            with safe_open(str(file), framework="pt") as fh:
                meta = fh.metadata() or {}
            if (meta.get("format") != CACHE_FORMAT or meta.get("lfae_digest") != self.digest
                    or meta.get("video_sha256") != video_sha):
                return None
            return load_file(str(file))
        except (SafetensorError, OSError, ValueError):
            return None   # a damaged file is recomputed

    def plan(self, dataset: Dataset, record: VideoRecord, needed: np.ndarray) -> CachePlan:
        """What the video's file lacks of `needed` (hashes the video's frames file)."""
        video_sha = file_sha256(dataset.path / record.file)
        have = self._existing(record, video_sha)
        present = have["frames"].numpy() if have is not None else np.zeros(0, np.int64)
        return CachePlan(record, video_sha, have, np.setdiff1d(np.asarray(needed, dtype=np.int64), present))

    def fill(self, lfae, dataset: Dataset, plan: CachePlan, device: torch.device, chunk_size: int | None = None) -> int:
        """Compute a plan's missing frames and rewrite the video's file; returns how many were computed."""
        record, have, missing = plan.record, plan.have, plan.missing
        if not missing.size:
            return 0
        frames = dataset.load(record, mmap=True)
        flow, occ = video_targets(lfae, frames, missing, device, chunk_size)
        if have is not None:
            order_frames = np.concatenate([have["frames"].numpy(), missing])
            flow = torch.cat([have["flow"], flow])
            occ = torch.cat([have["occlusion"], occ])
        else:
            order_frames = missing
        order = np.argsort(order_frames, kind="stable")
        tensors = {"frames": torch.from_numpy(order_frames[order].astype(np.int64)),
                   "flow": flow[torch.from_numpy(order)].contiguous(),
                   "occlusion": occ[torch.from_numpy(order)].contiguous()}
        meta = {"format": CACHE_FORMAT, "lfae_digest": self.digest, "video_id": record.id,
                "video_sha256": plan.video_sha256, "video_frames": str(record.frames)}
        try:
            with atomic_path(self.path(record)) as tmp:
                save_file(tensors, str(tmp), metadata=meta)
        except OSError as exc:
            raise RunFailure(f"Cannot write the flow cache file {self.path(record)}: {exc}",
                             hint="Check free space, or pass --no-flow-cache.") from None
        return int(missing.size)

    def ensure(self, lfae, dataset: Dataset, record: VideoRecord, needed: np.ndarray, device: torch.device,
               chunk_size: int | None = None) -> int:
        """Make the video's file hold every frame in `needed`; returns how many frames were computed."""
        return self.fill(lfae, dataset, self.plan(dataset, record, needed), device, chunk_size)

    def build(self, lfae, dataset: Dataset, needed: Callable[[VideoRecord], np.ndarray], device: torch.device,
              *, chunk_size: int | None = None, rank: int = 0, world_size: int = 1, show_progress: bool = True,
              announce: Callable[[int, int], None] | None = None) -> int:
        """Fill the cache for every video of `dataset` (this process's share: videos rank::world_size).

        `announce(frames, videos)` is called with the amount of work found missing before any of
        it is done (when there is some). Returns the number of frames computed."""
        records = list(dataset.videos)[rank::world_size]
        self.folder.mkdir(parents=True, exist_ok=True)
        plans = [self.plan(dataset, record, needed(record)) for record in records]
        plans = [p for p in plans if p.missing.size]
        total = sum(int(p.missing.size) for p in plans)
        if not total:
            return 0
        if announce is not None:
            announce(total, len(plans))
        bar = Progress(total, desc="flow cache", unit="frame", enabled=show_progress and rank == 0)
        computed = 0
        try:
            for plan in plans:
                n = self.fill(lfae, dataset, plan, device, chunk_size)
                computed += n
                bar.update(n)
        finally:
            bar.close()
        return computed

    # -- reading --------------------------------------------------------------------------------

    def lookup(self, record: VideoRecord, indices: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Flow (K, h, w, 2) and occlusion (K, 1, h, w) float32 of a clip with these frame indices."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size == 0 or idx[0] != 0:
            raise ValueError(f"cached targets need clips that start at frame 0, got indices {idx[:4]}...")
        file = self.path(record)
        try:
            tensors = load_file(str(file))
        except (SafetensorError, OSError, ValueError) as exc:
            raise RunFailure(f"The flow cache file {file} cannot be read: {exc}",
                             hint="Delete it (it is recomputed at the next start) or pass --no-flow-cache.") from None
        frames = tensors["frames"].numpy()
        rows = np.searchsorted(frames, idx)
        if (rows >= frames.size).any() or (frames[np.minimum(rows, frames.size - 1)] != idx).any():
            raise RunFailure(f"The flow cache file {file} lacks frames this clip needs.",
                             hint="Delete it (it is recomputed at the next start) or pass --no-flow-cache.")
        rows_t = torch.from_numpy(rows)
        return tensors["flow"][rows_t].numpy(), tensors["occlusion"][rows_t].numpy()


__all__ = ["CACHE_FORMAT", "CachePlan", "FlowCache", "file_sha256", "lfae_digest", "video_targets"]
