"""`lfdm info PATH`: what a model folder holds."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from lfdm_cli.cli.common import JsonOption, out, print_json


def _flatten(prefix: str, value, rows: list) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, rows)
    else:
        rows.append((prefix, value))


def info(
    path: Path = typer.Argument(..., help="A model folder (model.yaml + *.safetensors)."),
    json_out: bool = JsonOption,
) -> None:
    """Summarise a model folder: configuration, conditions, parts and parameter counts.

    Example: lfdm info weights/synthfaces64
    """
    from lfdm_cli.modelfolder import load_model_folder

    folder = load_model_folder(path)
    parts = {}
    for part in folder.parts:
        tensors = folder.load_tensors(part, dtype=None)
        parts[part] = {
            "tensors": len(tensors),
            "parameters": int(sum(t.numel() for t in tensors.values())),
            "bytes": folder.part_path(part).stat().st_size,
            "dtype": sorted({str(t.dtype).replace("torch.", "") for t in tensors.values()}),
        }
    summary = {"path": str(path), "digest": folder.digest(), "meta": folder.meta, "parts": parts}
    if json_out:
        print_json(summary)
        return
    table = Table("field", "value", title=f"model folder {path}")
    rows: list = []
    _flatten("", folder.meta, rows)
    for key, value in rows:
        table.add_row(key, str(value))
    out.print(table)
    ptable = Table("part", "tensors", "parameters", "size (MB)", "dtype")
    for name, p in parts.items():
        ptable.add_row(name, str(p["tensors"]), f"{p['parameters']:,}", f"{p['bytes'] / 1e6:.2f}", ",".join(p["dtype"]))
    out.print(ptable)
    out.print(f"digest: {summary['digest']}")


def register(app: typer.Typer) -> None:
    app.command("info")(info)
