"""The server's registry download folders (``<tmp>/fashionops-serve-*``) and their lifetime.

A registry-mode ``serve`` downloads both models of its alias (~100 MB) into a folder of its own.
The folder records its owner (``owner.json``: pid and process start time) and is removed when
the bundle using it is replaced (a reload), when the server shuts down (normal exit, SIGTERM,
SIGINT: the app's lifespan and :func:`remove_owned`), and, for a server that was killed before
it could clean up, by the next server start (:func:`sweep_stale`: only folders whose owner
process is gone; a folder without an owner file is left alone, its owner is unknown).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from fashionops.pids import pid_alive, start_ticks

log = logging.getLogger(__name__)

PREFIX = "fashionops-serve-"
OWNER_FILE = "owner.json"

_owned: set[Path] = set()
_owned_lock = threading.Lock()


def _alive(owner: dict[str, Any]) -> bool:
    """Whether the process that wrote ``owner`` still runs (unknown -> assume it does)."""
    pid, started = owner.get("pid"), owner.get("started")
    if not isinstance(pid, int) or pid <= 0:
        return True
    return pid_alive(pid, int(started) if isinstance(started, (int, str)) and str(started).isdigit() else None)


def new_download_dir(tmp_dir: str | Path | None = None) -> Path:
    """A fresh ``fashionops-serve-*`` folder owned by this process (under ``tmp_dir``, else the
    system temp dir); download into a subfolder of it."""
    root = Path(tempfile.mkdtemp(prefix=PREFIX, dir=tmp_dir))
    owner = {"pid": os.getpid(), "started": start_ticks(os.getpid())}
    (root / OWNER_FILE).write_text(json.dumps(owner))
    with _owned_lock:
        _owned.add(root)
    return root


def remove_download_dir(root: Path) -> None:
    """Delete a download folder (no error if it is gone already)."""
    shutil.rmtree(root, ignore_errors=True)
    with _owned_lock:
        _owned.discard(root)
    log.debug("removed download folder %s", root)


def remove_owned() -> None:
    """Delete every download folder this process made and still holds (server shutdown)."""
    with _owned_lock:
        roots = list(_owned)
    for root in roots:
        remove_download_dir(root)


def sweep_stale(tmp_dir: str | Path | None = None) -> list[Path]:
    """Delete the download folders of servers that no longer run; returns what was deleted."""
    base = Path(tmp_dir or tempfile.gettempdir())
    swept = []
    for root in sorted(base.glob(PREFIX + "*")):
        try:
            owner = json.loads((root / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue  # not ours to judge: no (readable) owner file
        if isinstance(owner, dict) and not _alive(owner):
            shutil.rmtree(root, ignore_errors=True)
            swept.append(root)
    if swept:
        log.info("removed %d download folders of servers that are gone: %s", len(swept), [p.name for p in swept])
    return swept
