"""Foundation: recipes validation, model folders, CLI conventions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from lfdm_cli import __version__
from lfdm_cli.config.recipe import Recipe, list_recipes, load_recipe
from lfdm_cli.config.schema import from_dict, to_dict
from lfdm_cli.errors import UserError
from lfdm_cli.modelfolder import load_model_folder, save_model_folder


def write_yaml(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_unknown_key_names_key_file_and_closest(tmp_path):
    path = write_yaml(tmp_path / "r.yaml", {"lfae": {"train": {"batch_sise": 4}}})
    with pytest.raises(UserError) as exc:
        load_recipe(path)
    text = str(exc.value)
    assert "lfae.train.batch_sise" in text
    assert str(path) in text
    assert "batch_size" in text


def test_wrong_type_and_range_name_the_field(tmp_path):
    path = write_yaml(tmp_path / "r.yaml", {"lfae": {"train": {"lr": "fast"}}})
    with pytest.raises(UserError, match=r"lfae\.train\.lr"):
        load_recipe(path)
    path = write_yaml(tmp_path / "r2.yaml", {"dm": {"diffusion": {"null_cond_prob": 1.5}}})
    with pytest.raises(UserError, match=r"dm\.diffusion\.null_cond_prob.*maximum"):
        load_recipe(path)
    path = write_yaml(tmp_path / "r3.yaml", {"data": {"fit": "zoom"}})
    with pytest.raises(UserError, match=r"data\.fit"):
        load_recipe(path)


def test_recipe_round_trip_through_plain_data():
    recipe = from_dict(Recipe, {"data": {"size": 64}, "lfae": {"model": {"num_regions": 5}}})
    again = from_dict(Recipe, to_dict(recipe))
    assert again == recipe
    assert again.lfae.model.num_regions == 5 and again.dm is None


def test_shipped_recipes_all_load():
    recipes = list_recipes()
    for name, path in recipes.items():
        assert isinstance(load_recipe(path), Recipe), name


def test_model_folder_round_trip_and_shape_mismatch(tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
    folder = save_model_folder(tmp_path / "m", {"resolution": 32}, {"lfae": net.state_dict()})
    loaded = load_model_folder(folder)
    assert loaded.meta["resolution"] == 32
    assert loaded.meta["provenance"]["package_version"] == __version__
    other = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
    loaded.load_into("lfae", other)
    for a, b in zip(net.parameters(), other.parameters()):
        assert torch.equal(a, b)
    wrong = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3), torch.nn.ReLU(), torch.nn.Conv2d(5, 2, 1))
    with pytest.raises(UserError) as exc:
        loaded.load_into("lfae", wrong)
    assert "0.weight" in str(exc.value) and "shape mismatch" in str(exc.value)
    with pytest.raises(UserError, match="no 'dm' part"):
        loaded.load_tensors("dm")
    with pytest.raises(UserError, match="already exists"):
        save_model_folder(folder, {}, {"lfae": net.state_dict()})
    # No temporary folders are left beside the model.
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_model_folder_float16_storage_loads_as_float32(tmp_path):
    net = torch.nn.Linear(3, 3)
    folder = load_model_folder(save_model_folder(tmp_path / "m", {}, {"dm": net.state_dict()}, float16=True))
    tensors = folder.load_tensors("dm")
    assert tensors["weight"].dtype == torch.float32
    assert torch.allclose(tensors["weight"], net.weight.detach(), atol=1e-3)


def test_not_a_model_folder(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_model_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not an lfdm model folder"):
        load_model_folder(tmp_path / "empty")


def test_version(lfdm):
    res = lfdm("--version")
    assert res.returncode == 0 and res.stdout.strip() == f"lfdm {__version__}"


def _all_commands():
    import typer.main

    from lfdm_cli.cli.app import app

    group = typer.main.get_command(app)
    paths = []

    def walk(cmd, path):
        paths.append(path)
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, path + [name])

    walk(group, [])
    return paths


@pytest.mark.parametrize("path", _all_commands(), ids=lambda p: " ".join(p) or "lfdm")
def test_help_of_every_command(path):
    from typer.testing import CliRunner

    from lfdm_cli.cli.app import app

    res = CliRunner().invoke(app, [*path, "--help"])
    assert res.exit_code == 0, res.output
    assert "Usage" in res.output


def test_user_error_exit_code_and_no_traceback(lfdm, tmp_path):
    res = lfdm("info", tmp_path / "missing")
    assert res.returncode == 2
    assert "Model folder not found" in res.stderr
    assert "Traceback" not in res.stderr
    res = lfdm("--debug", "info", tmp_path / "missing")
    assert res.returncode == 2 and "Traceback" in res.stderr


def test_recipes_commands(lfdm, tmp_path):
    res = lfdm("recipes", "list", "--json")
    assert res.returncode == 0
    names = [r["name"] for r in json.loads(res.stdout)]
    assert names == sorted(list_recipes())
    res = lfdm("recipes", "show", "no-such-recipe")
    assert res.returncode == 2 and "Unknown recipe" in res.stderr
    if names:
        dest = tmp_path / "copy.yaml"
        assert lfdm("recipes", "copy", names[0], dest).returncode == 0
        assert dest.read_text() == list_recipes()[names[0]].read_text()
        res = lfdm("recipes", "copy", names[0], dest)
        assert res.returncode == 2 and "already exists" in res.stderr
        assert lfdm("recipes", "show", names[0]).stdout == dest.read_text()


def test_info_json(lfdm, tmp_path):
    net = torch.nn.Linear(4, 2)
    save_model_folder(tmp_path / "m", {"resolution": 16, "conditions": ["a", "b"]}, {"dm": net.state_dict()})
    res = lfdm("info", tmp_path / "m", "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["parts"]["dm"]["parameters"] == 10
    assert data["meta"]["conditions"] == ["a", "b"]
