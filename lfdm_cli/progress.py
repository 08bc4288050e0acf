"""Progress reporting: a tqdm bar on a terminal, plain periodic log lines otherwise.

Shell-scripted batch jobs redirect output to files, where a redrawn bar turns into noise; there
the same calls print one line at most every `log_every` seconds (and at the end).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def _is_tty() -> bool:
    return sys.stderr.isatty()


class Progress:
    """Minimal progress API shared by every long command: update(n), set_postfix(dict), close()."""

    def __init__(self, total: int | None, desc: str, unit: str = "it", log_every: float = 10.0,
                 enabled: bool = True, initial: int = 0):
        self.total = total
        self.desc = desc
        self.unit = unit
        self.n = initial
        self.enabled = enabled
        self.postfix: dict = {}
        self._bar = None
        self._start = time.monotonic()
        self._last_log = self._start
        self._log_every = log_every
        if enabled and _is_tty():
            self._bar = tqdm(total=total, desc=desc, unit=unit, initial=initial, dynamic_ncols=True,
                             file=sys.stderr)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.enabled:
            now = time.monotonic()
            if now - self._last_log >= self._log_every:
                self._last_log = now
                self._log()

    def set_postfix(self, values: dict) -> None:
        self.postfix = values
        if self._bar is not None:
            self._bar.set_postfix(values, refresh=False)

    def _log(self, final: bool = False) -> None:
        elapsed = time.monotonic() - self._start
        parts = [f"{self.desc}: {self.n}" + (f"/{self.total}" if self.total else "") + f" {self.unit}"]
        if self.total and self.n and not final:
            eta = elapsed / max(self.n, 1) * (self.total - self.n)
            parts.append(f"eta {eta:.0f}s")
        parts.append(f"elapsed {elapsed:.0f}s")
        if self.postfix:
            parts.append(" ".join(f"{k}={v}" for k, v in self.postfix.items()))
        print(" | ".join(parts), file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.enabled and time.monotonic() - self._start >= 1.0:
            self._log(final=True)
        self.enabled = False

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def track(iterable: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it",
          enabled: bool = True) -> Iterator[T]:
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with Progress(total, desc, unit, enabled=enabled) as bar:
        for item in iterable:
            yield item
            bar.update(1)
