"""`lfdm convert ...`: turn the authors' reference checkpoints into lfdm model folders."""

from __future__ import annotations

from pathlib import Path

import typer

from lfdm_cli.cli.common import JsonOption, err, out, print_json
from lfdm_cli.errors import UserError

convert_app = typer.Typer(help="Convert the authors' reference checkpoints into lfdm model folders.",
                          no_args_is_help=True)


@convert_app.command("lfae")
def lfae_cmd(
    checkpoint: Path = typer.Argument(..., help="Reference stage-one checkpoint (.pth written by LFAE/train.py)."),
    config: Path = typer.Option(..., "--config", "-c",
                                help="The reference YAML the checkpoint was trained with (e.g. config/mug128.yaml)."),
    output: Path = typer.Option(..., "--output", "-o", help="Model folder to write."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing model folder."),
    json_out: bool = JsonOption,
) -> None:
    """Convert a reference latent flow auto-encoder checkpoint into a model folder.

    Only plain tensors are read from the checkpoint (no arbitrary unpickling). Every weight's name and shape is checked against the architecture in the YAML; the folder gets model.yaml and lfae.safetensors.

    Example: lfdm convert lfae RegionMM.pth --config config/mug128.yaml -o models/mug128
    """
    from lfdm_cli.config.schema import to_dict
    from lfdm_cli.convert import load_reference_lfae
    from lfdm_cli.modelfolder import save_model_folder

    if output.exists() and not overwrite:
        raise UserError(f"Model folder {output} already exists.", hint="Pass --overwrite to replace it.")
    converted = load_reference_lfae(checkpoint, config)
    meta = {
        "resolution": converted.frame_size,
        "lfae": to_dict(converted.config),
        "provenance": {
            "source": "reference checkpoint",
            "checkpoint": str(checkpoint),
            "config": str(config),
            "epoch": converted.epoch,
            "examples": converted.examples,
        },
    }
    save_model_folder(output, meta, {"lfae": converted.model.state_dict()}, overwrite=overwrite)
    n_params = sum(p.numel() for p in converted.model.parameters())
    summary = {"model": str(output), "resolution": converted.frame_size,
               "num_regions": converted.config.num_regions, "parameters": n_params,
               "latent_shape": list(converted.model.latent_shape),
               "epoch": converted.epoch, "examples": converted.examples}
    if json_out:
        print_json(summary)
        return
    err.print(f"Converted {checkpoint} ({n_params / 1e6:.1f}M parameters, {converted.frame_size}x"
              f"{converted.frame_size}, {converted.config.num_regions} regions, epoch {converted.epoch}).")
    out.print(str(output), markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    app.add_typer(convert_app, name="convert")
