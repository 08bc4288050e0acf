"""`lfdm convert ...`: turn the authors' reference checkpoints into lfdm model folders."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

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


@convert_app.command("reference")
def reference_cmd(
    lfae: Path = typer.Option(..., "--lfae", help="The authors' stage-one checkpoint (.pth from LFAE/train.py)."),
    lfae_config: Path = typer.Option(..., "--lfae-config", help="Its YAML (config/mug128.yaml, mhad128.yaml, natops128.yaml)."),
    dm: Path = typer.Option(..., "--dm", help="The authors' stage-two checkpoint (.pth from DM/train_video_flow_diffusion_*.py)."),
    dataset: str = typer.Option(..., "--dataset", help="mug, mhad or natops: gives the class names and the DM's settings."),
    output: Path = typer.Option(..., "--output", "-o", help="Model folder to write."),
    dm_config: Optional[Path] = typer.Option(None, "--dm-config",
                                             help="JSON/YAML with the reference's unet3d / gaussian_diffusion arguments "
                                                  "(default: the authors' settings for --dataset)."),
    embeddings: Optional[Path] = typer.Option(None, "--embeddings",
                                              help="Class-name embeddings (.json or .safetensors: name -> 768-d vector), "
                                                   "when bert-base-cased is not available here."),
    bert: Optional[Path] = typer.Option(None, "--bert", help="Folder with bert-base-cased's files (else $LFDM_BERT_DIR or "
                                                             "the local Hugging Face cache; nothing is downloaded)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing model folder."),
    json_out: bool = JsonOption,
) -> None:
    """Build a complete model folder from the authors' published LFAE and DM checkpoints.

    The folder holds both stages, the dataset's class names and their BERT embeddings (computed
    with bert-base-cased when it is available locally, or read from --embeddings). It samples with
    the authors' DDIM by default (their timestep spacing and coefficients, eta 1); `lfdm generate
    --sampler ddpm` runs what their demo scripts run (1000 ancestral steps).

    Example: lfdm convert reference --lfae RegionMM_0100_S046500.pth --lfae-config config/mug128.yaml --dm flowdiff_0005_S111600.pth --dataset mug -o models/mug128
    """
    from lfdm_cli.convert.reference import DATASETS, build_reference_folder
    from lfdm_cli.errors import unknown_name_error

    if dataset.lower() not in DATASETS:
        raise unknown_name_error("dataset", dataset, DATASETS)
    summary = build_reference_folder(output, lfae_checkpoint=lfae, lfae_config=lfae_config, dm_checkpoint=dm,
                                     dataset=dataset.lower(), dm_config=dm_config, embeddings=embeddings,
                                     bert_dir=bert, overwrite=overwrite)
    if json_out:
        print_json(summary)
        return
    err.print(f"Converted the authors' {dataset} models: {summary['resolution']}x{summary['resolution']} frames, "
              f"{summary['frames']} per clip, {len(summary['conditions'])} conditions "
              f"(embeddings from {summary['condition_embeddings']}).", markup=False, highlight=False)
    out.print(str(output), markup=False, highlight=False)



@convert_app.command("dm")
def dm_cmd(
    checkpoint: Path = typer.Argument(..., help="Reference stage-two checkpoint (.pth written by "
                                                "DM/train_video_flow_diffusion_*.py)."),
    config: str = typer.Option(..., "--config", "-c",
                               help="JSON/YAML file with the reference's `unet3d` and `gaussian_diffusion` "
                                    "arguments, or a preset: mug, mhad, natops (the authors' runs)."),
    output: Path = typer.Option(..., "--output", "-o", help="Model folder to write."),
    conditions: str = typer.Option("", "--conditions",
                                   help="Comma-separated condition names for the model's table (their BERT "
                                        "embeddings come from --embeddings or from a local bert-base-cased)."),
    embeddings: Path = typer.Option(None, "--embeddings",
                                    help="Precomputed 768-d condition embeddings: .safetensors (one vector per "
                                         "name) or .json {name: list of numbers}. Without --conditions, every name "
                                         "in the file is used."),
    bert_dir: Path = typer.Option(None, "--bert-dir", help="Folder with bert-base-cased's files (else "
                                                           "$LFDM_BERT_DIR or the local Hugging Face cache)."),
    merge: bool = typer.Option(False, "--merge", help="Add the DM to an existing model folder (for example "
                                                      "one written by `lfdm convert lfae`), keeping its other "
                                                      "parts."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing model folder."),
    json_out: bool = JsonOption,
) -> None:
    """Convert a reference flow diffusion (stage-two) checkpoint into a model folder.

    Only plain tensors are read (no arbitrary unpickling). Every weight is mapped to this implementation and
    checked by name and shape; the schedule and rotary tensors stored in the checkpoint are checked against
    the values computed here. The folder gets model.yaml (section `dm`) and dm.safetensors. Without condition
    names the model has an empty table and conditions must then be free text embedded with BERT.

    Example: lfdm convert dm mug_dm.pth --config mug --conditions anger,disgust,fear,happiness,sadness,surprise
    --embeddings mug_labels.safetensors -o models/mug --merge
    """
    import torch

    from lfdm_cli.convert.dm import load_reference_dm
    from lfdm_cli.diffusion.conditions import NULL_CONDITION, bert_embed, load_embeddings_file
    from lfdm_cli.diffusion.model import DM_EMA_PART, DM_PART, META_KEY, dm_meta, dm_state_dict
    from lfdm_cli.modelfolder import load_model_folder, save_model_folder

    names = [n.strip() for n in conditions.split(",") if n.strip() and n.strip() != NULL_CONDITION]
    rows = None
    if embeddings is not None:
        table = load_embeddings_file(embeddings)
        table.pop(NULL_CONDITION, None)
        names = names or list(table)
        missing = [n for n in names if n not in table]
        if missing:
            raise UserError(f"{embeddings} has no embedding for: {', '.join(missing)}.",
                            hint=f"It has: {', '.join(sorted(table))}.")
        rows = torch.stack([table[n] for n in names])
    elif names:
        rows = bert_embed(names, model_dir=bert_dir)

    parts: dict = {}
    meta: dict = {}
    if output.exists():
        if merge:
            existing = load_model_folder(output)
            if META_KEY in existing.meta and not overwrite:
                raise UserError(f"{output} already holds a stage-two model.",
                                hint="Pass --overwrite to replace it.")
            meta = {k: v for k, v in existing.meta.items() if k not in ("parts", "format")}
            parts = {p: existing.load_tensors(p, dtype=None) for p in existing.parts
                     if p not in (DM_PART, DM_EMA_PART)}
        elif not overwrite:
            raise UserError(f"Model folder {output} already exists.",
                            hint="Pass --overwrite to replace it, or --merge to add the DM to it.")
    model = load_reference_dm(checkpoint, config, conditions=names, condition_rows=rows, encoder="bert")
    meta[META_KEY] = dm_meta(model)
    prov = dict(meta.get("provenance") or {})
    prov["dm"] = {"source": "reference checkpoint", "checkpoint": str(checkpoint), "config": str(config)}
    meta["provenance"] = prov
    parts[DM_PART] = dm_state_dict(model)
    save_model_folder(output, meta, parts, overwrite=output.exists())
    spec = model.spec
    n_params = sum(p.numel() for p in model.unet.parameters())
    summary = {"model": str(output), "parameters": n_params, "num_frames": spec.num_frames,
               "latent_size": spec.latent_size, "fea_channels": spec.fea_channels,
               "conditions": spec.conditions, "learn_null_cond": spec.unet.learn_null_cond,
               "parts": sorted(parts)}
    if json_out:
        print_json(summary)
        return
    err.print(f"Converted {checkpoint} ({n_params / 1e6:.1f}M parameters, {spec.num_frames} frames at "
              f"{spec.latent_size}x{spec.latent_size} latents with {spec.fea_channels} channels, "
              f"{len(spec.conditions)} conditions).")
    out.print(str(output), markup=False, highlight=False)

def register(app: typer.Typer) -> None:
    app.add_typer(convert_app, name="convert")
