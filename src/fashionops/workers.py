"""Worker processes that do not outlive the process that started them.

A stage killed with SIGKILL cannot shut its pool down, and pool workers busy on a chunk keep
decoding images for minutes with nobody to read the result. :func:`die_with_parent` is the
pool ``initializer`` that prevents it: on Linux the kernel sends the worker SIGKILL when its
parent dies (``prctl(PR_SET_PDEATHSIG)``), and everywhere a daemon thread polls the parent pid
and exits the worker when it changes (the fallback, and the only guard off Linux).
:func:`kill_workers` ends a pool's workers at once when the stage is interrupted.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor

log = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# How often the fallback watchdog looks at the parent pid (seconds).
_WATCH_INTERVAL_S = 0.5


def _set_parent_death_signal(sig: int) -> bool:
    """Ask the Linux kernel to send ``sig`` to this process when its parent dies; False if unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return int(libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent: int) -> None:
    while True:
        if os.getppid() != parent:
            os._exit(1)  # orphaned: nobody will read what this worker produces
        time.sleep(_WATCH_INTERVAL_S)


def die_with_parent() -> None:
    """Pool initializer: end this worker when the process that started it dies (see the module doc).

    SIGTERM gets its default action back: a forked worker inherits the CLI's handler (which
    unwinds the stage), while a pool ends its workers with SIGTERM and expects them just to stop.
    """
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    parent = os.getppid()
    _set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)  # the parent died before the death signal was armed
    threading.Thread(target=_watch_parent, args=(parent,), name="parent-watchdog", daemon=True).start()


def kill_workers(pool: ProcessPoolExecutor) -> None:
    """Kill a ``ProcessPoolExecutor``'s workers now (interrupted stage: their chunks are not wanted).

    Uses the executor's process table (``_processes``, stable since Python 3.8): the public
    ``shutdown`` would wait for every running chunk to finish.
    """
    processes = dict(getattr(pool, "_processes", None) or {})
    for proc in processes.values():
        if proc.is_alive():
            proc.kill()
    for proc in processes.values():
        proc.join(timeout=5)
    pool.shutdown(wait=True, cancel_futures=True)
