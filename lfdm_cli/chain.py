"""Long videos by chaining generated clips, and the strategies that fight drift.

A chain is S segments of K frames; segment i+1 continues from a frame of segment i (its "anchor")
with its own condition and seed (seed + i). Every intermediate frame stays a float tensor on the
device; nothing is re-read from an encoded video. Strategies:

- `naive` (a): the anchor frame becomes the next segment's input image: it is re-encoded, its
  latent conditions the diffusion model and the decoder warps it. Every hop goes through the
  auto-encoder once more, so colours and details degrade (drift).
- `reanchor` (b): LFDM always warps x0; this keeps that property across segments. The decoder
  only ever warps the ORIGINAL image's encoding: each new segment's flow is composed with the
  accumulated flow (the anchor frame's flow back to the original), so a frame of segment i is
  the original image sampled at A(g(p)) (A accumulated, g new). Occlusions multiply along the
  way (a pixel is visible only if it was visible at every hop). The anchor frame's encoding only
  conditions the diffusion model (where to move next), it is never decoded from.
- `crossfade` (c): `reanchor` with segments overlapping by `overlap` frames (default 4, at most
  half a segment); over the overlap the
  composed flows (and occlusions) of both segments are blended linearly, the old segment fading
  out, so motion does not jump at the seam.
- `noised` (d): `naive`, with the carried-over conditioning perturbed as LVDM does for
  autoregressive extension: the diffusion model sees a lightly noised copy of the anchor latent,
  z' = sqrt(1 - s^2) z + s * std(z) * noise (variance preserving, s = `cond_noise`), so it does
  not lock onto artefacts of generated frames. The decoder still warps the clean anchor frame.

Output frames: segment 0 gives all K frames; later segments drop their frame 0 (it re-renders
the anchor frame, already in the video) or, with `crossfade`, overlap the previous segment by
`overlap` frames. Total: K + (S-1)(K-1) frames, or K + (S-1)(K-overlap) with `crossfade`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from lfdm_cli.errors import UserError, unknown_name_error
from lfdm_cli.pipeline import GenerationPipeline, SamplingSettings, cpu_generators

from lfdm_cli.chain_defaults import DEFAULT_COND_NOISE, DEFAULT_OVERLAP, DEFAULT_STRATEGY, STRATEGIES
# Keeps the conditioning-noise stream apart from the sampler's stream of the same seed, so that
# every strategy samples its flows from the same noise.
_COND_NOISE_SALT = 0x9E3779B97F4A7C15


@dataclass
class ChainSegment:
    index: int
    condition: str
    seed: int
    start: int  # first output frame that comes (at least partly) from this segment
    end: int  # one past its last output frame
    anchor: int | None  # output frame this segment continues from (None for the first)

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "condition": self.condition, "seed": self.seed,
                "frames": [self.start, self.end], "anchor_frame": self.anchor}


@dataclass
class ChainResult:
    """frames: (T, 3, H, W) float32 in [0, 1] on the CPU; segments in order."""

    frames: torch.Tensor
    segments: list[ChainSegment]
    strategy: str
    settings: SamplingSettings
    frames_per_segment: int
    overlap: int
    cond_noise: float
    timings: dict[str, float] = field(default_factory=dict)


def identity_grid(h: int, w: int, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """(h, w, 2) sampling grid of pixel centres (grid_sample, align_corners=False): no motion."""
    xs = (2 * torch.arange(w, device=device, dtype=dtype) + 1) / w - 1
    ys = (2 * torch.arange(h, device=device, dtype=dtype) + 1) / h - 1
    return torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)


def compose_flows(acc_flow: torch.Tensor | None, acc_occ: torch.Tensor | None, flow: torch.Tensor,
                  occlusion: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flows of a new segment composed with an accumulated flow.

    acc_flow (B, h, w, 2): where each pixel of the anchor frame samples the original image;
    acc_occ (B, 1, h, w); flow (B, K, h, w, 2) and occlusion (B, K, 1, h, w): the new segment
    relative to its anchor frame. Returns (B, K, h, w, 2) flows relative to the original image,
    A(g(p)), and occlusions occ(p) * acc_occ(g(p)). The accumulated flow is sampled as a
    displacement with border padding, so positions outside the frame stay outside (and are
    padded as the decoder pads them) instead of being pulled back in.
    """
    if acc_flow is None:
        return flow, occlusion
    b, k, h, w, _ = flow.shape
    grid = flow.reshape(b * k, h, w, 2)
    disp = (acc_flow - identity_grid(h, w, device=acc_flow.device, dtype=acc_flow.dtype)).permute(0, 3, 1, 2)
    disp = disp.repeat_interleave(k, dim=0)
    moved = F.grid_sample(disp, grid, mode="bilinear", padding_mode="border", align_corners=False)
    total = grid + moved.permute(0, 2, 3, 1)
    occ_prev = F.grid_sample(acc_occ.repeat_interleave(k, dim=0), grid, mode="bilinear", padding_mode="border",
                             align_corners=False)
    total_occ = occlusion.reshape(b * k, 1, h, w) * occ_prev
    return total.view(b, k, h, w, 2), total_occ.view(b, k, 1, h, w)


def perturb_latent(latent: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """LVDM-style conditional latent perturbation, variance preserving (see the module doc)."""
    if strength <= 0:
        return latent
    noise = torch.randn(latent.shape, generator=generator, device=generator.device).to(latent)
    scale = latent.flatten(1).std(dim=1).view(-1, *([1] * (latent.dim() - 1)))
    return (1 - strength ** 2) ** 0.5 * latent + strength * scale * noise


def crossfade_weights(overlap: int, *, device=None) -> torch.Tensor:
    """Weights of the new segment over the overlap: (j+1)/(overlap+1), j = 0..overlap-1."""
    return torch.arange(1, overlap + 1, device=device, dtype=torch.float32) / (overlap + 1)


def chain(pipeline: GenerationPipeline, image: torch.Tensor, conditions: Sequence[str], *,
          segments: int | None = None, frames_per_segment: int | None = None, strategy: str = DEFAULT_STRATEGY,
          overlap: int | None = None, cond_noise: float | None = None, seed: int = 0,
          settings: SamplingSettings | None = None, chunk_size: int | None = None,
          progress: bool = False) -> ChainResult:
    """Chain `segments` clips (default: one per condition; the list repeats when shorter) from
    one image (3, S, S) or (1, 3, S, S) in [0, 1]. See the module doc for the strategies."""
    from lfdm_cli.progress import Progress

    if strategy not in STRATEGIES:
        raise unknown_name_error("chain strategy", strategy, STRATEGIES)
    conditions = list(conditions)
    if not conditions:
        raise UserError("Give at least one condition (--conditions a,b,c).")
    pipeline.check_conditions(conditions)
    segments = int(segments or len(conditions))
    if segments < 1:
        raise UserError(f"--segments must be at least 1, got {segments}.")
    k = int(frames_per_segment or pipeline.default_frames)
    if k < 2:
        raise UserError(f"--frames-per-segment must be at least 2 to continue a clip, got {k}.")
    if overlap is None:
        overlap = min(DEFAULT_OVERLAP, k // 2)
    overlap = int(overlap) if strategy == "crossfade" else 0
    if strategy == "crossfade" and not 1 <= overlap <= k // 2:
        raise UserError(f"--overlap must be between 1 and half the segment length ({k // 2}), got {overlap}.")
    if cond_noise is None:
        cond_noise = DEFAULT_COND_NOISE if strategy == "noised" else 0.0
    if not 0.0 <= cond_noise < 1.0:
        raise UserError(f"--cond-noise must be in [0, 1), got {cond_noise}.")
    settings = (settings or pipeline.default_settings()).resolved(pipeline.timesteps)
    if image.dim() == 3:
        image = image.unsqueeze(0)
    if image.shape[0] != 1:
        raise ValueError("chain takes one image")
    image = image.to(pipeline.device)
    reanchored = strategy in ("reanchor", "crossfade")

    out: list[torch.Tensor] = []  # float (n, 3, S, S) pieces on the CPU
    n_out = 0
    records: list[ChainSegment] = []
    timings = {"encode_s": 0.0, "sample_s": 0.0, "decode_s": 0.0}
    bar = Progress(segments, "chain", unit="segment", enabled=progress)
    try:
        with torch.inference_mode():
            original = pipeline.encode(image)
            anchor_frame, anchor_enc = image, original
            acc_flow = acc_occ = None
            tail_flow = tail_occ = None  # crossfade: the previous segment's last `overlap` composed flows
            anchor_out = None
            for i in range(segments):
                condition = conditions[i % len(conditions)]
                seg_seed = seed + i
                t0 = time.perf_counter()
                if i > 0:
                    anchor_enc = pipeline.encode(anchor_frame)
                latent = anchor_enc.latent
                if cond_noise > 0 and i > 0:
                    gen = torch.Generator().manual_seed((seg_seed ^ _COND_NOISE_SALT) % (2 ** 63))
                    latent = perturb_latent(latent, cond_noise, gen)
                t1 = time.perf_counter()
                flow, occ = pipeline.sample_motion(latent, [condition], frames=k, settings=settings,
                                                   generators=cpu_generators([seg_seed]))
                t2 = time.perf_counter()
                if reanchored:
                    flow, occ = compose_flows(acc_flow, acc_occ, flow, occ)
                    frames, _ = pipeline.decode(original, flow, occ, chunk_size=chunk_size)
                else:
                    frames, _ = pipeline.decode(anchor_enc, flow, occ, chunk_size=chunk_size)
                frames = frames[0]
                if i == 0:
                    keep_from = 0
                    start = 0
                elif strategy == "crossfade":
                    w = crossfade_weights(overlap, device=flow.device)
                    blend_flow = (1 - w.view(-1, 1, 1, 1)) * tail_flow + w.view(-1, 1, 1, 1) * flow[0, :overlap]
                    blend_occ = (1 - w.view(-1, 1, 1, 1)) * tail_occ + w.view(-1, 1, 1, 1) * occ[0, :overlap]
                    blended, _ = pipeline.decode(original, blend_flow[None], blend_occ[None], chunk_size=chunk_size)
                    out.append(blended[0].float().cpu())
                    start = n_out
                    n_out += overlap
                    keep_from = overlap
                else:
                    keep_from = 1
                    start = n_out
                # crossfade holds back its last `overlap` frames until the next segment blends them
                held = overlap if (strategy == "crossfade" and i < segments - 1) else 0
                piece = frames[keep_from:k - held]
                out.append(piece.float().cpu())
                n_out += piece.shape[0]
                if held:
                    tail_flow, tail_occ = flow[0, k - held:], occ[0, k - held:]
                    anchor_index = k - held
                else:
                    anchor_index = k - 1
                end = n_out + held
                records.append(ChainSegment(index=i, condition=condition, seed=seg_seed, start=start, end=end,
                                            anchor=anchor_out))
                anchor_out = (n_out if held else n_out - 1)
                anchor_frame = frames[anchor_index:anchor_index + 1]
                if reanchored:
                    acc_flow = flow[:, anchor_index]
                    acc_occ = occ[:, anchor_index]
                t3 = time.perf_counter()
                timings["encode_s"] += t1 - t0
                timings["sample_s"] += t2 - t1
                timings["decode_s"] += t3 - t2
                bar.update(1)
    finally:
        bar.close()
    video = torch.cat(out)
    timings["total_s"] = sum(timings.values())
    return ChainResult(frames=video, segments=records, strategy=strategy, settings=settings,
                       frames_per_segment=k, overlap=overlap, cond_noise=float(cond_noise), timings=timings)


def expected_length(segments: int, frames_per_segment: int, strategy: str, overlap: int | None = None) -> int:
    """Number of output frames of a chain."""
    if overlap is None:
        overlap = min(DEFAULT_OVERLAP, frames_per_segment // 2)
    step = frames_per_segment - (overlap if strategy == "crossfade" else 1)
    return frames_per_segment + (segments - 1) * step
