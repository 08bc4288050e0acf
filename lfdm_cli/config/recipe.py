"""Recipes: one YAML file describes the data and both training stages of a model.

Shipped recipes live in the top-level `recipes/` folder; `lfdm recipes list|show|copy` expose
them. A recipe is referred to by name (`mug128`) or by path (`./my_recipe.yaml`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lfdm_cli.config.schema import from_dict, load_yaml
from lfdm_cli.diffusion.config import DMRecipe
from lfdm_cli.errors import UserError, unknown_name_error
from lfdm_cli.lfae.config import LFAERecipe


@dataclass
class DataConfig:
    size: int = field(default=128, metadata={"min": 16})
    fit: str = field(default="pad", metadata={"choices": ("pad", "crop", "stretch")})


@dataclass
class Recipe:
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    lfae: LFAERecipe | None = None
    dm: DMRecipe | None = None


def recipes_dir() -> Path:
    """The shipped recipes: `recipes/` beside the package in a checkout or editable install."""
    return Path(__file__).resolve().parents[2] / "recipes"


def list_recipes() -> dict[str, Path]:
    folder = recipes_dir()
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def resolve_recipe_path(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise UserError(f"Recipe file not found: {path}")
        return path
    known = list_recipes()
    if str(name_or_path) not in known:
        raise unknown_name_error("recipe", str(name_or_path), known,
                                 where="the shipped recipes (see `lfdm recipes list`)")
    return known[str(name_or_path)]


def recipe_summary(path: Path) -> str:
    """First comment line of a recipe file: what it is for."""
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("#"):
            return line.lstrip("# ").strip()
        if line:
            break
    return ""


def load_recipe(name_or_path: str | Path) -> Recipe:
    path = resolve_recipe_path(name_or_path)
    return from_dict(Recipe, load_yaml(path), source=str(path))


def dump_recipe(recipe: Recipe) -> str:
    from lfdm_cli.config.schema import to_dict

    return yaml.safe_dump(to_dict(recipe), sort_keys=False)
