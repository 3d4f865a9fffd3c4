"""Ctrl-C / SIGTERM during a sweep: recorded, and acted on at a safe point.

The CLI turns SIGTERM into :class:`~fashionops.errors.Terminated` (Ctrl-C is ``KeyboardInterrupt``),
raised wherever the main thread is. In a sweep that is unsafe twice over: raised inside a weakref
callback or ``__del__`` (the garbage collection Optuna runs after each trial), Python prints it as
"Exception ignored" and carries on; raised in the middle of an MLflow write, it can leave the
SQLite store locked for the parent run's last writes ("database is locked", seen under load).
So :func:`stop_signals` only records the first signal; :class:`StopOnSignal` raises it between
two training or validation batches, and :meth:`StopRequest.check` after every trial and before the
next one starts. A second signal acts at once (the previous handler), for a sweep that hangs.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from fashionops.errors import Terminated

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """The signal a sweep was asked to stop with (None: none yet)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def check(self, *_: Any) -> None:
        """Raise what the signal means (``KeyboardInterrupt`` / ``Terminated``) if one arrived;
        usable as an Optuna callback."""
        if self.signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.signum is not None:
            raise Terminated(f"terminated by signal {self.signum}")


@contextmanager
def stop_signals() -> Iterator[StopRequest]:
    """Record SIGINT/SIGTERM for the block (main thread only), then let the previous handler act."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous: dict[int, Any] = {int(signum): signal.getsignal(signum) for signum in SIGNALS}

    def handler(signum: int, frame: Any) -> None:
        if stop.signum is None:  # the first signal: act on it at the next safe point
            stop.signum = signum
            return
        before = previous[signum]
        if callable(before):
            before(signum, frame)
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt
        else:
            raise Terminated(f"terminated by signal {signum}")

    for signum in SIGNALS:
        signal.signal(signum, handler)
    try:
        yield stop
    finally:
        for number, before in previous.items():
            signal.signal(number, before)


class StopOnSignal(Callback):
    """Raise a recorded stop signal between two batches of a trial's training or validation (no
    MLflow write is under way there); Lightning then ends the trial's run as it does on an error."""

    def __init__(self, stop: StopRequest) -> None:
        self.stop = stop

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self.stop.check()

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self.stop.check()
