"""One pipeline run per workspace at a time.

``dvc.lock`` and the stage outputs are shared state, and DVC's own repo lock fails at once instead
of waiting, so a run holds :func:`workspace_lock` for its whole duration and a second run waits.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from fashionops.orchestration.failures import PipelineError

LOCK_NAME = "fashionops-pipeline.lock"

log = logging.getLogger(__name__)


class WorkspaceBusy(PipelineError):
    """Another pipeline run holds the workspace lock."""


@contextmanager
def workspace_lock(
    workspace: str | Path, timeout_s: float = 3600.0, owner: str = "", log: Callable[[str], None] | None = None
) -> Iterator[Path]:
    """Hold the workspace's pipeline lock (``.dvc/tmp/fashionops-pipeline.lock``) for the block.

    Waits up to ``timeout_s`` seconds (polling) for another run to finish; then raises
    :class:`WorkspaceBusy` naming the holder (``owner`` of the other run, its pid and since when).
    ``log`` receives the "waiting" line (the flow's run logger); default: this module's logger.
    """
    from filelock import FileLock, Timeout

    ws = Path(workspace).resolve()
    tmp = ws / ".dvc" / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / LOCK_NAME
    info = tmp / (LOCK_NAME + ".owner")
    lock = FileLock(str(path), timeout=timeout_s)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        holder = _holder(info)
        (log or _module_log)(f"workspace {ws} is busy ({holder}); waiting up to {timeout_s:.0f} s")
        try:
            lock.acquire(timeout=timeout_s, poll_interval=0.5)
        except Timeout:
            raise WorkspaceBusy(
                f"another pipeline run holds {path} ({_holder(info)}); waited {timeout_s:.0f} s. "
                "Wait for it to finish, or raise the lock timeout."
            ) from None
    try:
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        info.write_text(f"owner={owner or '-'} pid={os.getpid()} since={since}")
        yield path
    finally:
        info.unlink(missing_ok=True)
        lock.release()


def _holder(info: Path) -> str:
    """Who holds the lock, as its holder wrote it (``owner=... pid=... since=...``)."""
    return info.read_text().strip() if info.is_file() else "unknown"


def _module_log(line: str) -> None:
    log.info("%s", line)
