"""Training checkpoints: safetensors for tensors, JSON for everything else, nothing pickled.

Layout of one checkpoint (written atomically: the folder appears complete or not at all):

    RUN_DIR/checkpoints/step_0001000/
        model.safetensors       unwrapped weights and buffers of the trained module
        ema.safetensors         exponential moving average of the weights (when the run keeps one)
        optimizer.safetensors   optimizer state tensors, flattened as "state.<param>.<name>"
        state.json              step, epoch, learning-rate schedule, RNG states, data position,
                                recipe, loss scale, optimizer groups and parameter names

Weights are saved without DDP's "module." prefix and the step is global, so a checkpoint resumes
under any number of processes.
"""

from __future__ import annotations

import base64
import json
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lfdm_cli.atomic import atomic_dir
from lfdm_cli.errors import RunFailure, UserError

CHECKPOINTS_DIR = "checkpoints"
MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
STATE_FORMAT = "lfdm-train-state/1"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def step_dir_name(step: int) -> str:
    return f"step_{step:07d}"


# ----------------------------------------------------------------------------- tensors

def _plain_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous, no shared storage (safetensors refuses aliased tensors)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, t in state.items():
        t = t.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr() if t.numel() else None
        if ptr is not None and ptr in seen:
            t = t.clone()
        elif ptr is not None:
            seen.add(ptr)
        out[name] = t
    return out


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise RunFailure(f"Checkpoint file {path} is not readable: {exc}",
                         hint="Delete this checkpoint folder to resume from the previous one.") from None


# ----------------------------------------------------------------------------- optimizer

def optimizer_state_to_flat(optimizer: torch.optim.Optimizer, param_names: list[str]
                            ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into tensors (safetensors) and JSON-safe metadata."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in sd["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{idx}.{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    groups = []
    for group in sd["param_groups"]:
        groups.append({k: (list(v) if isinstance(v, tuple) else v) for k, v in group.items()})
    meta = {"type": type(optimizer).__name__, "param_groups": groups, "scalars": scalars,
            "param_names": param_names}
    return _plain_tensors(tensors), meta


def optimizer_state_from_flat(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                              meta: dict[str, Any], param_names: list[str], source: str) -> None:
    if meta.get("type") != type(optimizer).__name__:
        raise UserError(f"{source}: the checkpoint holds {meta.get('type')} state, "
                        f"this run uses {type(optimizer).__name__}.")
    if meta.get("param_names") != param_names:
        saved = meta.get("param_names") or []
        diff = sorted(set(saved) ^ set(param_names))[:5]
        raise UserError(f"{source}: the optimizer state was saved for different parameters "
                        f"({len(saved)} saved vs {len(param_names)} now; e.g. {', '.join(diff) or 'order differs'}).",
                        hint="Resume with the same recipe and model configuration as the run was started with.")
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    for idx, entries in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(entries)
    defaults = optimizer.defaults
    groups = []
    for group in meta["param_groups"]:
        groups.append({k: (tuple(v) if isinstance(defaults.get(k), tuple) and isinstance(v, list) else v)
                       for k, v in group.items()})
    optimizer.load_state_dict({"state": state, "param_groups": groups})


# ----------------------------------------------------------------------------- RNG

def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _from_b64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def _u32_b64(values) -> str:
    return base64.b64encode(np.asarray(values, dtype=np.uint32).tobytes()).decode("ascii")


def _u32_from_b64(s: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), dtype=np.uint32).copy()


def capture_rng_state() -> dict[str, Any]:
    """The state of every global random generator, JSON-safe (bulk state base64-encoded)."""
    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": {"version": py[0], "state": _u32_b64(py[1]), "gauss_next": py[2]},
        "numpy": {"kind": np_state[0], "key": _u32_b64(np_state[1]), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": _b64(torch.get_rng_state()),
        "cuda": None,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in _u32_from_b64(py["state"])), py["gauss_next"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], _u32_from_b64(n["key"]), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(_from_b64(state["torch"]))
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():
        states = [_from_b64(s) for s in cuda]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)


# ----------------------------------------------------------------------------- folders

@dataclass
class Checkpoint:
    path: Path
    step: int
    state: dict[str, Any]

    def model_tensors(self) -> dict[str, torch.Tensor]:
        return _load_tensors(self.path / MODEL_FILE)

    def ema_tensors(self) -> dict[str, torch.Tensor] | None:
        file = self.path / EMA_FILE
        return _load_tensors(file) if file.is_file() else None

    def optimizer_tensors(self) -> dict[str, torch.Tensor]:
        return _load_tensors(self.path / OPTIMIZER_FILE)


def checkpoints_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first (partial writes have hidden temp names)."""
    folder = checkpoints_dir(run_dir)
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir() and (p / STATE_FILE).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def load_checkpoint(path: str | Path) -> Checkpoint:
    path = Path(path)
    state_file = path / STATE_FILE
    try:
        state = json.loads(state_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RunFailure(f"Checkpoint {path} has no readable {STATE_FILE}: {exc}",
                         hint="Delete this checkpoint folder to resume from the previous one.") from None
    if state.get("format") != STATE_FORMAT:
        raise UserError(f"{state_file} is not an lfdm training state (format {state.get('format')!r}).")
    for name in (MODEL_FILE, OPTIMIZER_FILE):
        if not (path / name).is_file():
            raise RunFailure(f"Checkpoint {path} is missing {name}.",
                             hint="Delete this checkpoint folder to resume from the previous one.")
    return Checkpoint(path=path, step=int(state["step"]), state=state)


def latest_checkpoint(run_dir: str | Path) -> Checkpoint | None:
    found = list_checkpoints(run_dir)
    return load_checkpoint(found[-1][1]) if found else None


def save_checkpoint(run_dir: str | Path, step: int, *, model_state: dict[str, torch.Tensor],
                    optimizer_tensors: dict[str, torch.Tensor], state: dict[str, Any],
                    ema_state: dict[str, torch.Tensor] | None = None, keep: int = 3) -> Path:
    """Write checkpoint `step` atomically, then delete all but the newest `keep` checkpoints."""
    target = checkpoints_dir(run_dir) / step_dir_name(step)
    state = {"format": STATE_FORMAT, **state, "step": step}
    with atomic_dir(target, overwrite=True) as tmp:
        save_file(_plain_tensors(model_state), str(tmp / MODEL_FILE), metadata={"format": STATE_FORMAT})
        if ema_state is not None:
            save_file(_plain_tensors(ema_state), str(tmp / EMA_FILE), metadata={"format": STATE_FORMAT})
        save_file(optimizer_tensors, str(tmp / OPTIMIZER_FILE), metadata={"format": STATE_FORMAT})
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
    prune_checkpoints(run_dir, keep, protect=target)
    return target


def prune_checkpoints(run_dir: str | Path, keep: int, protect: Path | None = None) -> None:
    found = list_checkpoints(run_dir)
    for _, path in found[:max(0, len(found) - max(1, keep))]:
        if protect is not None and path == protect:
            continue
        shutil.rmtree(path, ignore_errors=True)
