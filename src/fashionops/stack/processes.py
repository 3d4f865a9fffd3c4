"""The stack's processes: start one detached, record it, find it again, stop exactly it.

Each process starts in its own session (its process group is its pid, so stopping it reaches the
workers it forks) with stdout and stderr in ``<stack.dir>/logs/<name>.log``. Its record
``<stack.dir>/pids/<name>.json`` keeps the pid *and* the process's start time (field 22 of
``/proc/<pid>/stat``): a pid the kernel reused for another program never matches, so ``down``
stops only what ``up`` started, and nothing is ever looked up by name.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from fashionops.errors import FashionOpsError
from fashionops.pids import pid_alive, start_ticks

log = logging.getLogger(__name__)

POLL_S = 0.5


class StackError(FashionOpsError):
    """A stack service failed to start, become ready or stop; the message names it and its log."""


@dataclass(frozen=True)
class ProcessRecord:
    """A started process: what ``down`` and ``status`` need to find exactly it again."""

    name: str
    pid: int
    start_ticks: int
    args: list[str]
    log: str


def is_alive(record: ProcessRecord) -> bool:
    """True when the recorded process itself (same pid, same start time) is running."""
    return pid_alive(record.pid, record.start_ticks)


def record_path(pids_dir: Path, name: str) -> Path:
    return pids_dir / f"{name}.json"


def load_record(pids_dir: Path, name: str) -> ProcessRecord | None:
    """The record of service ``name``, None when there is none (or it is unreadable)."""
    path = record_path(pids_dir, name)
    try:
        return ProcessRecord(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def running(pids_dir: Path, name: str) -> ProcessRecord | None:
    """The record of service ``name`` when its process is still running, else None."""
    record = load_record(pids_dir, name)
    return record if record is not None and is_alive(record) else None


def start(
    name: str,
    args: list[str],
    pids_dir: Path,
    log_file: Path,
    env: dict[str, str],
    cwd: Path,
    user: str | None = None,
) -> ProcessRecord:
    """Start ``args`` detached (own session, output appended to ``log_file``) and record it.

    ``user``: run as this account (PostgreSQL refuses to run as root)."""
    pids_dir.mkdir(parents=True, exist_ok=True)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as out:
        out.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(args)}\n".encode())
        out.flush()
        try:
            proc = subprocess.Popen(
                args,
                cwd=str(cwd),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: `down` stops its workers with it
                user=user,
                group=user,
                extra_groups=[] if user else None,
            )
        except OSError as exc:
            raise StackError(f"{name}: cannot start {args[0]}: {exc.strerror or exc}") from exc
    ticks = start_ticks(proc.pid)
    if ticks is None:
        raise StackError(f"{name} exited at once; see {log_file}")
    record = ProcessRecord(name=name, pid=proc.pid, start_ticks=ticks, args=args, log=str(log_file))
    tmp = record_path(pids_dir, name).with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(record)))
    os.replace(tmp, record_path(pids_dir, name))
    log.info("%s started (pid %d, log %s)", name, proc.pid, log_file)
    return record


def wait_until(
    ready: Callable[[], bool], record: ProcessRecord, what: str, timeout_s: float, poll_s: float = POLL_S
) -> None:
    """Poll ``ready`` until it holds; raise a one-line :class:`StackError` naming the service and
    its log when the process exits or ``timeout_s`` passes first."""
    deadline = time.monotonic() + timeout_s
    while True:
        if ready():
            return
        if not is_alive(record):
            raise StackError(f"{record.name} exited before {what}; see {record.log}")
        if time.monotonic() > deadline:
            raise StackError(f"{record.name}: not {what} after {timeout_s:.0f} s; see {record.log}")
        time.sleep(poll_s)


def stop(record: ProcessRecord, sig: int = signal.SIGTERM, timeout_s: float = 60.0, whole_group: bool = True) -> bool:
    """Stop the recorded process and its process group: ``sig`` (to the group, or to the leader
    alone when ``whole_group`` is False: PostgreSQL stops its own children), then SIGKILL to the
    group after ``timeout_s``. Returns False (and signals nothing) when that process is not
    running any more."""
    if not is_alive(record):
        return False
    group = _own_group(record.pid)
    log.info("stopping %s (pid %d)", record.name, record.pid)
    _signal(record.pid, group and whole_group, sig)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not is_alive(record) and not (group and group_members(record.pid)):
            return True
        time.sleep(POLL_S)
    log.warning("%s (pid %d) did not stop within %.0f s: killing it", record.name, record.pid, timeout_s)
    _signal(record.pid, group, signal.SIGKILL)
    return True


def group_members(pgid: int) -> list[int]:
    """The running (not zombie) processes of process group ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:  # fields[2]: field 5, the process group
            members.append(int(entry.name))
    return members


def _own_group(pid: int) -> bool:
    """True when ``pid`` leads its own process group (started by :func:`start`)."""
    try:
        return os.getpgid(pid) == pid
    except ProcessLookupError:
        return False


def _signal(pid: int, group: bool, sig: int) -> None:
    try:
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass
