"""Error types that the CLI turns into clean messages and exit codes.

Library code raises these instead of printing: the CLI maps `UserError` to exit code 2 (bad usage
or bad input) and `RunFailure` to exit code 1, and shows no traceback unless `--debug` is given.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Callable, Iterable


class LfdmError(Exception):
    """Base class for expected, explainable failures."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n{self.hint}"


class UserError(LfdmError):
    """Bad usage or bad input (a missing file, an invalid recipe, an unknown condition)."""

    exit_code = 2


class RunFailure(LfdmError):
    """A run that started correctly and then failed (NaN loss, out of memory, I/O failure)."""

    exit_code = 1


def run_script(main: Callable[[], None]) -> None:
    """Run a script's `main` the way the CLI runs a command: an LfdmError becomes one `Error:` line
    (and its hint) on stderr and the error's exit code, without a traceback."""
    try:
        main()
    except LfdmError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)


def closest(name: str, choices: Iterable[str]) -> str | None:
    """The closest known name to `name`, for 'did you mean' hints."""
    choices = list(choices)
    match = difflib.get_close_matches(name, choices, n=1, cutoff=0.0)
    return match[0] if match else None


def unknown_name_error(kind: str, name: str, choices: Iterable[str], where: str = "") -> UserError:
    """An error for an unknown key/condition/recipe that lists the choices and the closest one."""
    choices = sorted(choices)
    best = closest(name, choices)
    loc = f" in {where}" if where else ""
    hint = f"Known {kind}s: {', '.join(choices)}."
    if best is not None:
        hint += f" Did you mean '{best}'?"
    return UserError(f"Unknown {kind} '{name}'{loc}.", hint=hint)
