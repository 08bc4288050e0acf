"""Options and output helpers shared by every command."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer
from rich.console import Console

# Results go to stdout; messages, progress and errors to stderr, so `--json` output stays clean.
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

DeviceOption = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N.")
GenPrecisionOption = typer.Option(
    "fp32", "--precision",
    help="Network arithmetic: fp32; bf16 (CPUs with AVX-512 BF16/AMX, and GPUs: faster, outputs differ "
         "from fp32 by rounding); fp16 (CUDA only).")
JsonOption = typer.Option(False, "--json", help="Print machine-readable JSON to stdout.")


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


def print_json_line(data: Any) -> None:
    sys.stdout.write(json.dumps(data, default=str) + "\n")
    sys.stdout.flush()
