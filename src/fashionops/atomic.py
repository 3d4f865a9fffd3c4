"""Writes that readers see whole or not at all: build next to the target, then rename.

Every stage output goes through these, so a crash or a bad input never leaves a half-written
file or directory behind (the previous output stays until the new one is complete).

A killed process cannot remove its own staging directory or temp file, so :func:`staged_dir` and
:func:`atomic_path` name each one after its owner (``.<dest>.staging-<pid>-<random>[.tmp]``, the
replaced output while it is swapped ``.<dest>.staging-<pid>-replaced``) and, before staging, sweep
the ones beside the target whose owner is no longer alive. Owners are looked up on this host: a
directory shared between hosts (NFS) needs one writer host per target.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fashionops.pids import pid_alive

log = logging.getLogger(__name__)
# ".<dest>.staging-<owner pid>-<suffix>": the only names the sweep removes (a user's own
# ".data.old-2019" beside a `pull --dest data` is never touched).
_STAGING_NAME = re.compile(r"staging-(\d+)-.+")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp file path beside ``path``; on success it replaces ``path``, else it is removed
    (temp files of killed earlier writers of ``path`` are swept first)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_staging(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.staging-{os.getpid()}-", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (flushed to disk before the rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(path)


def write_json(path: str | Path, obj: Any, default: Callable[[Any], Any] = str) -> Path:
    """Write ``obj`` as indented JSON atomically; ``default`` converts what json cannot."""
    return write_text(path, json.dumps(obj, indent=2, default=default) + "\n")


def sweep_stale_staging(dest: str | Path) -> list[Path]:
    """Remove staging directories and temp files beside ``dest`` left by killed processes; returns
    what was removed.

    Only ``.<dest>.staging-<pid>-*`` entries whose owner ``pid`` is dead on this host go; live
    owners' ones stay. (Unowned ``.<dest>.<random>`` folders of versions before owners were recorded
    are left for a person to remove.)
    """
    dest = Path(dest)
    prefix = f".{dest.name}."
    removed: list[Path] = []
    if not dest.parent.is_dir():
        return removed
    for entry in dest.parent.iterdir():
        owner = _STAGING_NAME.fullmatch(entry.name[len(prefix) :]) if entry.name.startswith(prefix) else None
        if owner is None or entry.is_symlink() or pid_alive(int(owner.group(1))):
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        elif entry.is_file():  # an atomic_path temp file
            entry.unlink(missing_ok=True)
        else:
            continue
        removed.append(entry)
    if removed:
        log.info("removed %d staging folder(s) of killed runs beside %s", len(removed), dest)
    return removed


@contextmanager
def staged_dir(dest: str | Path) -> Iterator[Path]:
    """Yield an empty temp directory beside ``dest``; on success it replaces ``dest`` (the old
    one is moved aside first and removed only afterwards), on failure it is removed.

    Staging directories of killed earlier runs beside ``dest`` are swept first
    (:func:`sweep_stale_staging`)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_staging(dest)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.staging-{os.getpid()}-", dir=dest.parent))
    try:
        yield tmp
        old = dest.with_name(f".{dest.name}.staging-{os.getpid()}-replaced")  # swept if killed here
        if dest.exists():
            os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
