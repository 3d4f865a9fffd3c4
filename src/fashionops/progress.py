"""Progress of a long loop, shown the way its output is read.

On a terminal (stderr is a TTY) a live ``tqdm`` bar, with log records printed above it; when
stderr is a pipe or a file (a Prefect flow relaying a stage, ``make run > log``, CI) no bar
frames at all: one log line every ~10% of the work, once the loop has run for a few seconds
(short loops stay silent), and a closing line with the total and the rate.

    with Progress(len(files), "embedded", unit="images", logger=log) as progress:
        for chunk in chunks:
            ...
            progress.update(len(chunk))
"""

from __future__ import annotations

import logging
import os
import sys
import time
from contextlib import ExitStack
from types import TracebackType
from typing import Any, TextIO

log = logging.getLogger(__name__)
STEP = 0.1  # log a line every 10% of the work
QUIET_S = 5.0  # no progress lines for a loop that finishes sooner than this


def live(stream: TextIO | None = None) -> bool:
    """Whether progress drawn on ``stream`` (default stderr, where bars and logs go) is live:
    it is a terminal (``TERM=dumb`` is not)."""
    try:
        return (stream or sys.stderr).isatty() and os.environ.get("TERM", "") != "dumb"
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


class Progress:
    """A bar on a terminal, else a log line every ``step`` of ``total`` (see the module docstring).

    ``describe``: what the loop does, in the past tense of its lines ("embedded 4096/40028
    images"); ``unit``: what it counts; ``logger``: where the lines go (the loop's module
    logger, so they carry its name); ``bar``: force the bar on (True) or off (False); ``step``:
    the fraction between two lines; ``quiet_s``: no line before this many seconds (default
    :data:`QUIET_S`).
    """

    def __init__(
        self,
        total: int,
        describe: str,
        unit: str = "items",
        logger: logging.Logger | None = None,
        bar: bool | None = None,
        step: float = STEP,
        quiet_s: float | None = None,
    ) -> None:
        self.total = max(int(total), 0)
        self.describe = describe
        self.unit = unit
        self.logger = logger or log
        self.step = step
        self.quiet_s = QUIET_S if quiet_s is None else quiet_s
        self.done = 0
        self.lines = 0  # progress lines logged (log mode)
        self._t0 = time.perf_counter()
        self._marks = max(1, round(1 / step))  # lines at 1/marks, 2/marks, ... of the total
        self._next = 1  # the next mark
        self._stack = ExitStack()
        self._bar: Any = None
        if bar if bar is not None else live():
            from tqdm.auto import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._bar = tqdm(total=self.total, desc=describe, unit=f" {unit}", leave=False, dynamic_ncols=True)
            self._stack.callback(self._bar.close)
            self._stack.enter_context(logging_redirect_tqdm())  # log records print above the bar

    @property
    def seconds(self) -> float:
        """Seconds since the loop started."""
        return time.perf_counter() - self._t0

    def rate(self) -> float:
        """Units per second so far."""
        return self.done / max(self.seconds, 1e-9)

    def update(self, n: int = 1) -> None:
        """``n`` more units done."""
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        if not self.total:
            return
        if self.done * self._marks >= self._next * self.total and self.done < self.total:  # integers: exact
            self._next = self.done * self._marks // self.total + 1
            if self.seconds >= self.quiet_s:
                self._log()

    def _log(self) -> None:
        self.lines += 1
        pct = 100.0 * self.done / self.total if self.total else 100.0
        self.logger.info(
            "%s %d/%d %s (%.0f%%, %.0f %s/s)",
            self.describe,
            self.done,
            self.total,
            self.unit,
            pct,
            self.rate(),
            self.unit,
        )

    def close(self) -> None:
        """End the bar; in log mode, a closing line when progress lines were logged."""
        self._stack.close()
        if self._bar is None and self.lines:
            self._log()

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:
            self._stack.close()  # no closing line for a loop that failed
            return
        self.close()
