"""Is the process that owns something still running? (staging folders, registry locks, serve
download folders, stack services, MLflow runs).

A pid alone can be reused by a later process, so owners that can record it also record the
process's start time (``/proc/<pid>/stat`` field 22, clock ticks since boot): a pid with another
start time is another process. Linux's ``/proc``; elsewhere only the pid's existence is known.
"""

from __future__ import annotations

import os
from pathlib import Path


def _stat_fields(pid: int) -> list[str] | None:
    """``/proc/<pid>/stat`` from field 3 (the state) on, None when unreadable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()  # after "pid (comm)": comm may hold spaces


def start_ticks(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot; None when there is no such running
    process (a zombie has exited: only its parent's wait() is left) or no ``/proc``."""
    fields = _stat_fields(pid)
    if fields is None or fields[0] == "Z":
        return None
    return int(fields[19])  # field 22 of the line; fields[0] is field 3


def pid_alive(pid: int, started: int | None = None) -> bool:
    """Whether ``pid`` is a running (not zombie) process on this host and, when its recorded start
    time ``started`` is given, the same process (not a later one that reuses the pid)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's live process
    fields = _stat_fields(pid)
    if fields is None:
        return True  # no /proc (not Linux): existence is all we know
    if fields[0] == "Z":
        return False
    return started is None or int(fields[19]) == started
