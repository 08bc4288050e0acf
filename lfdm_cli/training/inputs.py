"""What both training commands check before they start: the recipe's stage and the dataset."""

from __future__ import annotations

from pathlib import Path

from lfdm_cli.config.recipe import Recipe, load_recipe, resolve_recipe_path
from lfdm_cli.data.dataset import Dataset
from lfdm_cli.errors import UserError

_STAGE_HINT = {
    "lfae": "Stage one needs lfae: {model: ..., train: ...}",
    "dm": "Stage two needs dm: {unet: ..., train: ...}",
}


def load_stage_inputs(recipe: str | Path, data: str | Path, stage: str) -> tuple[Path, Recipe, Dataset, Dataset]:
    """(recipe path, recipe, dataset, its train split), or a UserError saying what does not fit."""
    recipe_path = resolve_recipe_path(recipe)
    rec = load_recipe(recipe_path)
    if getattr(rec, stage) is None:
        raise UserError(f"Recipe {recipe_path} has no '{stage}' section.",
                        hint=f"{_STAGE_HINT[stage]}; see `lfdm recipes show mug128`.")
    dataset = Dataset.open(data)
    if dataset.size != rec.data.size:
        raise UserError(f"The dataset in {data} has {dataset.size}x{dataset.size} frames but recipe "
                        f"'{recipe_path.stem}' trains at {rec.data.size}x{rec.data.size}.",
                        hint=f"Convert the videos at the recipe's size (lfdm preprocess ... --size {rec.data.size}) "
                             "or use a recipe for this size.")
    train_split = dataset.split("train")
    if not len(train_split):
        raise UserError(f"The dataset in {data} has no training videos (split 'train').")
    return recipe_path, rec, dataset, train_split
