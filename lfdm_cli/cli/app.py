"""The `lfdm` command: one Typer app with a sub-app or command per job.

Every command module exposes `register(app)`; this file only wires them together and maps the
project's errors to exit codes (0 ok, 1 runtime failure, 2 bad usage or input, 130 interrupted).
"""

from __future__ import annotations

import sys
import traceback

import typer

from lfdm_cli import __version__
from lfdm_cli.cli.common import err
from lfdm_cli.errors import LfdmError

app = typer.Typer(
    name="lfdm",
    help="Animate a still image with a condition using Latent Flow Diffusion Models (LFDM).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state = {"debug": False}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"lfdm {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show Python tracebacks for errors."),
) -> None:
    _state["debug"] = debug


def _register_commands() -> None:
    from lfdm_cli.cli import recipes as recipes_cmd
    from lfdm_cli.cli import info as info_cmd
    from lfdm_cli.cli import evaluate as evaluate_cmd
    from lfdm_cli.cli import convert as convert_cmd
    from lfdm_cli.cli import data as data_cmd
    from lfdm_cli.cli import train as train_cmd
    from lfdm_cli.cli import generate as generate_cmd
    from lfdm_cli.cli import chain as chain_cmd
    from lfdm_cli.cli import demo as demo_cmd

    for module in (recipes_cmd, info_cmd, evaluate_cmd, convert_cmd, data_cmd, train_cmd, generate_cmd, chain_cmd,
                   demo_cmd):
        module.register(app)


_register_commands()


def main(argv: list[str] | None = None) -> None:
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        app(args=argv, prog_name="lfdm", standalone_mode=True)
    except LfdmError as exc:
        if debug:
            traceback.print_exc()
        err.print("Error:", style="bold red", end=" ")
        err.print(exc.message, markup=False, highlight=False)
        if exc.hint:
            err.print(exc.hint, markup=False, highlight=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("Interrupted.")
        sys.exit(130)
