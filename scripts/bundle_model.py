"""Package a trained run's model folder as a bundled model: examples, float16 storage, provenance.

Usage:
  python scripts/bundle_model.py RUN_MODEL_DIR OUT_DIR --examples IMG [IMG ...] [--float16] [--drop PART ...]

The parts are copied tensor for tensor (optionally stored as float16; loading always computes in
float32), `model.yaml` keeps the run's metadata and records the packaging, and the example images
go to OUT_DIR/examples/ (what `lfdm demo` animates). `--drop dm` leaves out the raw (non-EMA)
diffusion weights: generation uses the EMA ones, and the folder is half the size.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from lfdm_cli.errors import UserError, run_script
from lfdm_cli.modelfolder import load_model_folder, save_model_folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--examples", type=Path, nargs="+", required=True)
    ap.add_argument("--float16", action="store_true")
    ap.add_argument("--name", default=None)
    ap.add_argument("--drop", nargs="*", default=[], help="parts to leave out (e.g. dm, keeping dm_ema)")
    args = ap.parse_args()

    src = load_model_folder(args.model)
    meta = dict(src.meta)
    meta["name"] = args.name or args.out.name
    prov = dict(meta.get("provenance") or {})
    prov["bundled_from"] = str(args.model)
    meta["provenance"] = prov
    unknown = sorted(set(args.drop) - set(src.parts))
    if unknown:
        raise UserError(f"--drop: {args.model} has no part(s) {', '.join(unknown)}.",
                        hint=f"Its parts: {', '.join(src.parts)}.")
    missing = [str(image) for image in args.examples if not image.is_file()]
    if missing:  # checked before anything is written
        raise UserError(f"--examples: no such image file(s): {', '.join(missing)}.")
    parts = {part: src.load_tensors(part, dtype=None) for part in src.parts if part not in args.drop}
    if args.drop:
        prov["dropped_parts"] = sorted(args.drop)
    save_model_folder(args.out, meta, parts, overwrite=True, float16=args.float16)
    examples = args.out / "examples"
    examples.mkdir()
    for image in args.examples:
        shutil.copyfile(image, examples / image.name)
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"{args.out}: parts {', '.join(parts)}, {len(args.examples)} examples, {total / 1e6:.1f} MB")


if __name__ == "__main__":
    run_script(main)
