"""Atomic file and folder writes: an interrupted write never leaves a file under its final name."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Read once at import: os.umask can only be read by setting it, which would race with threads.
_UMASK = _read_umask()


def _tmp_sibling(path: Path, is_dir: bool = False) -> Path:
    # Same directory as the target so os.replace is a rename on one filesystem; the suffix keeps
    # encoders (ffmpeg, PIL) able to infer the format from the name. mkstemp/mkdtemp create
    # private (0600/0700) entries; outputs get the permissions a plain open()/mkdir would give.
    prefix = f".{path.name}."
    if is_dir:
        name = tempfile.mkdtemp(prefix=prefix, suffix=".partial", dir=path.parent)
        os.chmod(name, 0o777 & ~_UMASK)
        return Path(name)
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=".partial" + path.suffix, dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
    finally:
        os.close(fd)
    return Path(name)


def _public(path: Path) -> None:
    """Give files the permissions open() would: some writers (safetensors) create them 0600."""
    if path.is_dir():
        for child in path.rglob("*"):
            if child.is_file() and not child.is_symlink():
                os.chmod(child, 0o666 & ~_UMASK)
    elif path.is_file():
        os.chmod(path, 0o666 & ~_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it to `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        yield tmp
        _public(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; move it into place only if the block succeeds.

    With `overwrite`, an existing folder at `path` is replaced (removed only after the new one is
    complete).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path, is_dir=True)
    try:
        yield tmp
        _public(tmp)
        if path.exists():
            if not overwrite:
                raise FileExistsError(f"{path} already exists")
            old = _tmp_sibling(path, is_dir=True)
            old.rmdir()
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
