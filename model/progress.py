"""Progress of long work: a tqdm bar on a terminal, log lines elsewhere.

In a pod, CI or a file, tqdm's carriage returns make one unreadable line; there the
convention is a log line every N items. ``progress(...)`` returns a tqdm bar when stderr
is a terminal and otherwise a :class:`LogProgress` with the same small interface
(``update``, ``set_postfix``, ``close``, iteration, context manager) that logs
``desc: done/total (pct) rate, eta [postfix]`` every ``total // lines`` items (and at
the end).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

from tqdm import tqdm

log = logging.getLogger("model.progress")

#: log lines per task when stderr is not a terminal
LINES = 20


class LogProgress:
    """tqdm's interface, reporting as log lines (see the module doc)."""

    def __init__(
        self,
        iterable: Iterable[Any] | None = None,
        total: int | None = None,
        desc: str = "",
        unit: str = "it",
        initial: int = 0,
        disable: bool = False,
        **_: Any,
    ) -> None:
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.disable = disable
        self.every = max(1, (total or 0) // LINES) if total else 100
        self.start, self.start_n, self.postfix = time.perf_counter(), initial, ""
        self._last_logged = initial

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable or ():
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = " ".join(f"{k}={v}" for k, v in values.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.n - self._last_logged >= self.every:
            self._log()

    def _log(self) -> None:
        if self.disable:
            return
        self._last_logged = self.n
        elapsed = time.perf_counter() - self.start
        rate = (self.n - self.start_n) / elapsed if elapsed > 0 else 0.0
        done = f"{self.n}/{self.total}" if self.total else str(self.n)
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        eta = ""
        if self.total and rate > 0:
            eta = f", eta {(self.total - self.n) / rate:.0f} s"
        extra = f" [{self.postfix}]" if self.postfix else ""
        log.info("%s: %s%s %.2f %s/s%s%s", self.desc, done, pct, rate, self.unit, eta, extra)

    def close(self) -> None:
        if self.n != self._last_logged:
            self._log()


def progress(iterable: Iterable[Any] | None = None, **kwargs: Any) -> Any:
    """A tqdm bar on a terminal, else :class:`LogProgress` (same arguments)."""
    if sys.stderr.isatty():
        return tqdm(iterable, **kwargs)
    return LogProgress(iterable, **kwargs)
