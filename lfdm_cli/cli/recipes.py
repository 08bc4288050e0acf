"""`lfdm recipes list|show|copy`: start from a shipped recipe (like `tune ls` / `tune cp`)."""

from __future__ import annotations

import shutil
from pathlib import Path

import typer
from rich.table import Table

from lfdm_cli.cli.common import JsonOption, err, out, print_json
from lfdm_cli.config.recipe import list_recipes, load_recipe, recipe_summary, resolve_recipe_path
from lfdm_cli.errors import UserError

recipes_app = typer.Typer(help="List, show and copy the shipped training recipes.", no_args_is_help=True)


@recipes_app.command("list")
def list_cmd(json_out: bool = JsonOption) -> None:
    """List the shipped recipes.

    Example: lfdm recipes list
    """
    known = list_recipes()
    if json_out:
        print_json([{"name": n, "path": str(p), "description": recipe_summary(p)} for n, p in known.items()])
        return
    table = Table("recipe", "stages", "description")
    for name, path in known.items():
        recipe = load_recipe(path)
        stages = ", ".join(s for s in ("lfae", "dm") if getattr(recipe, s) is not None)
        table.add_row(name, stages, recipe_summary(path))
    out.print(table)


@recipes_app.command("show")
def show_cmd(name: str = typer.Argument(..., help="Recipe name (see `lfdm recipes list`) or path.")) -> None:
    """Print a recipe (validated first).

    Example: lfdm recipes show mug128
    """
    path = resolve_recipe_path(name)
    load_recipe(path)
    typer.echo(path.read_text(), nl=False)


@recipes_app.command("copy")
def copy_cmd(
    name: str = typer.Argument(..., help="Recipe name (see `lfdm recipes list`)."),
    dest: Path = typer.Argument(..., help="Destination file or folder."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing file."),
) -> None:
    """Copy a shipped recipe to edit it.

    Example: lfdm recipes copy synthfaces64 my_recipe.yaml
    """
    src = resolve_recipe_path(name)
    if dest.is_dir():
        dest = dest / src.name
    if dest.exists() and not overwrite:
        raise UserError(f"{dest} already exists.", hint="Pass --overwrite to replace it.")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    err.print(f"Copied recipe '{src.stem}' to {dest}")


def register(app: typer.Typer) -> None:
    app.add_typer(recipes_app, name="recipes")
