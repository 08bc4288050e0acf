"""The README's commands are the ones CI and users run."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def readme_blocks() -> list[str]:
    text = (REPO / "README.md").read_text()
    return re.findall(r"```(?:bash|sh|console)?\n(.*?)```", text, flags=re.S)


def test_ci_runs_the_readme_test_command():
    blocks = readme_blocks()
    test_lines = [line for block in blocks for line in block.splitlines() if "pytest" in line]
    assert test_lines, "README shows no test command"
    ci = (REPO / ".ci" / "run").read_text()
    # The README's test command ends with the pytest invocation CI runs.
    pytest_cmd = test_lines[0].split("&&")[-1].strip()
    assert pytest_cmd in ci, (pytest_cmd, "not in .ci/run")


def test_readme_command_reference_lists_every_command():
    import typer.main

    from lfdm_cli.cli.app import app

    text = (REPO / "README.md").read_text()
    group = typer.main.get_command(app)
    for name, cmd in group.commands.items():
        subs = getattr(cmd, "commands", None)
        if subs:
            for sub in subs:
                assert f"lfdm {name} {sub}" in text, f"README does not document `lfdm {name} {sub}`"
        else:
            assert f"lfdm {name}" in text, f"README does not document `lfdm {name}`"


def test_quickstart_first_command_runs_as_written(tmp_path):
    """The Quickstart's first command, after its install steps, in a fresh folder."""
    import shlex
    import subprocess
    import sys

    blocks = readme_blocks()
    quick = next(b for b in blocks if "lfdm demo" in b and "pip install" in b).strip()
    steps = [s.strip() for s in quick.split("&&")]
    lfdm_steps = [s for s in steps if s.startswith("lfdm ")]
    assert lfdm_steps and all(s.startswith(("python -m pip", "lfdm ")) for s in steps)
    for step in lfdm_steps:
        args = shlex.split(step)[1:]
        res = subprocess.run([sys.executable, "-m", "lfdm_cli", *args], cwd=tmp_path, capture_output=True,
                             text=True, timeout=600)
        assert res.returncode == 0, (step, res.stderr)
    from lfdm_cli.io import read_video

    # The demo animates a bundled face with every condition of the bundled model.
    grid = read_video(tmp_path / "lfdm-demo" / "all_conditions.gif")
    assert grid.shape[0] > 1 and grid.std() > 10
    assert len(list((tmp_path / "lfdm-demo").glob("*.mp4"))) == 7
