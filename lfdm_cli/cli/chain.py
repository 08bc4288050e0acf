"""`lfdm chain`: one long video from several generated clips, each with its own condition."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from lfdm_cli import __version__
from lfdm_cli.chain_defaults import DEFAULT_COND_NOISE, DEFAULT_OVERLAP, DEFAULT_STRATEGY, STRATEGIES
from lfdm_cli.cli.common import DeviceOption, GenPrecisionOption, err, out, print_json_line
from lfdm_cli.cli.generate import (
    DecodeChunkOption,
    EmaOption,
    EtaOption,
    FitOption,
    FpsOption,
    GuidanceOption,
    ModelOption,
    OverwriteOption,
    QuietOption,
    SamplerOption,
    SpacingOption,
    StepsOption,
    check_fit,
    check_fps,
    device_info,
    file_sha256,
    load_pipeline,
    model_info,
    now_iso,
    output_kind,
    resolve_settings,
    sampling_overrides,
    sidecar_path,
    slug,
    write_sidecar,
)
from lfdm_cli.errors import UserError, unknown_name_error

SIDECAR_FORMAT = "lfdm-chain/1"


def chain_cmd(
    image: Path = typer.Argument(..., help="Input image (any format Pillow reads)."),
    conditions: str = typer.Option(..., "--conditions", "-c",
                                   help="Comma-separated conditions, one per segment; the list repeats when "
                                        "shorter than --segments."),
    segments: Optional[int] = typer.Option(None, "--segments", min=1,
                                           help="Number of clips to chain (default: one per condition)."),
    frames_per_segment: Optional[int] = typer.Option(None, "--frames-per-segment", "-k", min=2,
                                                     help="Frames sampled per clip (default: the model's clip length)."),
    strategy: str = typer.Option(DEFAULT_STRATEGY, "--strategy",
                                 help="How a clip continues the previous one: naive (default: re-encode the last "
                                      "frame; drifted least in our measurements), reanchor (always warp the original "
                                      "image, composing flows), crossfade (reanchor + blend overlapping clips in flow "
                                      "space), noised (naive + LVDM-style noise on the carried-over conditioning)."),
    overlap: Optional[int] = typer.Option(None, "--overlap", min=1,
                                          help=f"Frames shared by consecutive clips (crossfade; default "
                                               f"{DEFAULT_OVERLAP}, at most half a clip)."),
    cond_noise: Optional[float] = typer.Option(None, "--cond-noise", min=0.0,
                                               help=f"Noise on the carried-over latent, relative to its spread "
                                                    f"(default {DEFAULT_COND_NOISE} for noised, else 0)."),
    model: Optional[Path] = ModelOption,
    sampler: Optional[str] = SamplerOption,
    steps: Optional[int] = StepsOption,
    eta: Optional[float] = EtaOption,
    guidance: Optional[float] = GuidanceOption,
    ddim_spacing: Optional[str] = SpacingOption,
    seed: int = typer.Option(0, "--seed", "-s", min=0, help="Seed of the first clip; clip i uses seed+i."),
    output: Optional[str] = typer.Option(None, "--output", "-o",
                                         help="long.mp4, long.gif or a folder for PNG frames "
                                              "(default: IMAGE-STEM_chain.mp4 here)."),
    fps: Optional[float] = FpsOption,
    fit: Optional[str] = FitOption,
    overwrite: bool = OverwriteOption,
    decode_chunk: Optional[int] = DecodeChunkOption,
    ema: bool = EmaOption,
    device: str = DeviceOption,
    precision: str = GenPrecisionOption,
    quiet: bool = QuietOption,
    json_out: bool = typer.Option(False, "--json", help="Print the sidecar as one JSON line."),
) -> None:
    """Make a long video by chaining generated clips, each continuing where the last one ended.

    Every clip has its own condition and seed; frames stay float tensors in memory between clips.
    Chaining drifts (the picture degrades with every hop); the default strategy, naive,
    re-encodes each clip's last frame as the next clip's input image, which drifted least of the
    four strategies over 10 clips (see the README). The sidecar (NAME.json) lists each clip's
    condition, seed and frame range.

    Example:

      lfdm chain face.png --conditions happiness,surprise,neutral --segments 6 -o long.mp4
    """
    from lfdm_cli.chain import chain
    from lfdm_cli.io import load_image, write_video

    start = time.perf_counter()
    check_fit(fit)
    check_fps(fps)
    if strategy not in STRATEGIES:
        raise unknown_name_error("chain strategy", strategy, STRATEGIES)
    names = [c.strip() for c in conditions.split(",") if c.strip()]
    if not names:
        raise UserError("--conditions is empty.", hint="Example: --conditions happiness,surprise,neutral")
    target_text = output if output is not None else f"{slug(image.stem)}_chain.mp4"
    kind = output_kind(target_text)
    target = Path(target_text.rstrip("/")) if kind == "frames" else Path(target_text)
    if target.exists() and not overwrite:
        raise UserError(f"{target} already exists.", hint="Pass --overwrite to replace it, or choose another -o.")
    array = load_image(image)
    pipeline = load_pipeline(model, device, ema, precision)
    load_s = time.perf_counter() - start
    pipeline.check_conditions(names)
    settings = resolve_settings(pipeline, sampling_overrides(sampler, steps, eta, guidance, ddim_spacing))
    fit_mode = fit or pipeline.fit
    fps_value = float(fps or pipeline.fps)
    x = pipeline.prepare_images([array], fit_mode)
    result = chain(pipeline, x[0], names, segments=segments, frames_per_segment=frames_per_segment,
                   strategy=strategy, overlap=overlap, cond_noise=cond_noise, seed=seed, settings=settings,
                   chunk_size=decode_chunk, progress=not quiet and not json_out)
    t0 = time.perf_counter()
    sidecar = sidecar_path(target, kind)
    if sidecar.exists():
        sidecar.unlink()
    write_video(target, result.frames, fps=fps_value)
    s = result.settings
    data = {
        "format": SIDECAR_FORMAT,
        "output": str(target),
        "source_image": str(image.resolve()),
        "image_sha256": file_sha256(image),
        "strategy": result.strategy,
        "overlap": result.overlap,
        "cond_noise": result.cond_noise,
        "frames_per_segment": result.frames_per_segment,
        "frames": int(result.frames.shape[0]),
        "segments": [seg.to_dict() for seg in result.segments],
        "conditions": names,
        "seed": seed,
        "sampler": s.sampler, "steps": s.steps, "eta": s.eta, "ddim_spacing": s.ddim_spacing,
        "guidance": s.guidance,
        "fps": fps_value, "fit": fit_mode, "resolution": pipeline.resolution,
        "frame0": "the model's own frame 0 of the first segment (generated, close to the input image)",
        "model": model_info(pipeline),
        "timings": {**{k: round(v, 4) for k, v in result.timings.items()}, "load_model_s": round(load_s, 4),
                    "write_s": round(time.perf_counter() - t0, 4)},
        **device_info(pipeline.device),
        "precision": pipeline.precision,
        "lfdm_version": __version__,
        "created": now_iso(),
    }
    write_sidecar(sidecar, data)
    if json_out:
        print_json_line(data)
        return
    out.print(str(target), markup=False, highlight=False)
    if not quiet:
        err.print(f"{len(result.segments)} segments, {data['frames']} frames ({result.strategy}) in "
                  f"{time.perf_counter() - start:.1f}s; segments listed in {sidecar}.", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("chain")(chain_cmd)
