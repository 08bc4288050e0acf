"""A complete model folder from the authors' published checkpoints (both stages + class names).

The authors trained one LFAE and one DM per dataset (MUG, MHAD, NATOPS). Their DM embeds the
class names with bert-base-cased at every sampling call; lfdm stores those embeddings once, in the
condition table, so generating needs no text model. The embeddings come from BERT when it is
available locally (`transformers` + the model files), or from a file made elsewhere.

The folder's `generation` defaults select the authors' DDIM (their timestep spacing and
coefficients, eta 1); `--sampler ddpm` is what their demo scripts run (1000 ancestral steps).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lfdm_cli.config.schema import to_dict
from lfdm_cli.errors import UserError, unknown_name_error

DATASETS = ("mug", "mhad", "natops")
EMBEDDING_DIM = 768


def dataset_classes(dataset: str) -> list[str]:
    """The class names the authors' DM was trained with, in their order."""
    from lfdm_cli.data.importers import mhad, mug, natops

    table = {"mug": mug.CLASSES, "mhad": mhad.CLASSES, "natops": natops.CLASSES}
    if dataset not in table:
        raise unknown_name_error("dataset", dataset, DATASETS)
    return list(table[dataset])


def class_embeddings(names: list[str], *, embeddings: str | Path | None = None, bert_dir: str | Path | None = None,
                     use_cls: bool = False) -> tuple[torch.Tensor, str]:
    """(N, 768) rows for `names` and where they came from (a file, or bert-base-cased)."""
    from lfdm_cli.diffusion.conditions import BERT_ENV, bert_embed, load_embeddings_file

    if embeddings is not None:
        table = load_embeddings_file(embeddings)
        missing = [n for n in names if n not in table]
        if missing:
            raise UserError(f"{embeddings} has no embedding for: {', '.join(missing)}.",
                            hint=f"It must hold one {EMBEDDING_DIM}-d vector per class name: {', '.join(names)}.")
        rows = torch.stack([table[n] for n in names])
        if rows.shape[1] != EMBEDDING_DIM:
            raise UserError(f"{embeddings} holds {rows.shape[1]}-d vectors; the authors' models take "
                            f"{EMBEDDING_DIM}-d bert-base-cased embeddings.")
        return rows, f"file {embeddings}"
    try:
        rows = bert_embed(names, model_dir=bert_dir, use_cls=use_cls)
    except UserError as exc:
        raise UserError(
            f"The class-name embeddings need bert-base-cased, which is not available here: {exc.message}",
            hint=("Either make BERT available (pip install transformers, and put bert-base-cased's files in a "
                  f"folder passed with --bert DIR or ${BERT_ENV}), or compute the embeddings on a machine that "
                  "has it and pass them with --embeddings FILE: a .json object or .safetensors file mapping each "
                  "class name to its 768-d vector (mean of BERT's last hidden state over the tokens after [CLS], "
                  "[SEP] included, as the authors compute it). Class names: " + "; ".join(names) + ".")) from None
    return rows, "bert-base-cased"


def build_reference_folder(output: str | Path, *, lfae_checkpoint: str | Path, lfae_config: str | Path,
                           dm_checkpoint: str | Path, dataset: str, dm_config: str | Path | None = None,
                           embeddings: str | Path | None = None, bert_dir: str | Path | None = None,
                           overwrite: bool = False) -> dict[str, Any]:
    """Convert both stages and the dataset's conditions into the model folder `output`; returns a
    summary."""
    from lfdm_cli.convert.dm import load_reference_dm, spec_from_reference_config
    from lfdm_cli.convert.lfae import load_reference_lfae
    from lfdm_cli.diffusion.model import DM_PART, dm_meta, dm_state_dict
    from lfdm_cli.modelfolder import save_model_folder

    output = Path(output)
    if output.exists() and not overwrite:
        raise UserError(f"Model folder {output} already exists.", hint="Pass --overwrite to replace it.")
    names = dataset_classes(dataset)
    lfae = load_reference_lfae(lfae_checkpoint, lfae_config)
    config_source = dm_config if dm_config is not None else dataset
    # The DM's own configuration decides [CLS] vs mean pooling; read it before embedding.
    use_cls = spec_from_reference_config(config_source, conditions=names).text_use_bert_cls
    rows, rows_source = class_embeddings(names, embeddings=embeddings, bert_dir=bert_dir, use_cls=use_cls)
    dm = load_reference_dm(dm_checkpoint, config_source, conditions=names, condition_rows=rows, encoder="bert")
    latent_c, latent_side, _ = lfae.model.latent_shape
    if dm.spec.fea_channels != latent_c:
        raise UserError(f"The DM checkpoint takes {dm.spec.fea_channels}-channel image latents but the LFAE "
                        f"({lfae_config}) makes {latent_c}-channel ones.",
                        hint="Use the LFAE and DM checkpoints of the same dataset (and --dm-config for "
                             "non-paper sizes).")
    if dm.spec.latent_size != lfae.model.flow_size:
        raise UserError(f"The DM works on {dm.spec.latent_size}x{dm.spec.latent_size} flows but the LFAE's flows "
                        f"are {lfae.model.flow_size}x{lfae.model.flow_size}.",
                        hint="Check --dm-config (gaussian_diffusion.image_size) against the LFAE config.")
    meta = {
        "resolution": lfae.frame_size,
        "lfae": to_dict(lfae.config),
        "dm": dm_meta(dm),
        "fit": "pad",
        "generation": {"sampler": "ddim", "ddim_spacing": "reference", "eta": 1.0, "guidance": 1.0},
        "provenance": {
            "source": "the authors' reference checkpoints (lfdm convert reference)",
            "dataset": dataset,
            "lfae_checkpoint": str(lfae_checkpoint), "lfae_config": str(lfae_config),
            "lfae_epoch": lfae.epoch,
            "dm_checkpoint": str(dm_checkpoint), "dm_config": str(config_source),
            "condition_embeddings": rows_source,
        },
    }
    save_model_folder(output, meta, {"lfae": lfae.model.state_dict(), DM_PART: dm_state_dict(dm)},
                      overwrite=overwrite)
    return {"model": str(output), "dataset": dataset, "resolution": lfae.frame_size, "conditions": names,
            "frames": dm.spec.num_frames, "condition_embeddings": rows_source,
            "lfae_parameters": sum(p.numel() for p in lfae.model.parameters()),
            "dm_parameters": sum(p.numel() for p in dm.unet.parameters())}
