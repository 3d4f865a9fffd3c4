"""Run the pipeline's commands in a workspace: DVC stages, the catalogue import, experiments.

Every command runs as a subprocess in the workspace (its paths, git commit and stores) with
:func:`stage_env`; its output goes to ``log`` as it arrives, one record per message at the level
the command wrote it (:class:`~fashionops.orchestration.relay.Relay`: warnings stay warnings,
no progress-bar frames, a JSON result on one line), and a non-zero exit raises
:class:`~fashionops.orchestration.failures.StageFailed` with the command's own error message.
``log`` is a logger (a flow's run logger: levels kept) or a plain ``log(text)`` callback (INFO
and above).

* :func:`run_stage` - ``dvc repro --single-item <stage>``: DVC decides whether the stage runs
  (changed deps/params), is skipped or restored from its run cache.
* :func:`ensure_raw_data` - ``dvc pull`` (when a remote holds it) or ``fashionops import`` when the
  catalogue is missing.
* :func:`save_experiment` - ``dvc exp save`` so a run is traceable to code, params and data.
* :func:`push_outputs` - ``dvc push`` to ``$FASHIONOPS_DVC_REMOTE`` (the stack's ``stack`` remote)
  when it is set; :func:`ensure_raw_data` pulls from the same remote; :func:`push_unless_pushed`
  skips a push that would send nothing new.
"""

from __future__ import annotations

import codecs
import hashlib
import logging
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from fashionops.atomic import write_text
from fashionops.orchestration.failures import PipelineError, StageFailed, error_message
from fashionops.orchestration.overrides import workspace_params, workspace_path
from fashionops.orchestration.relay import Relay
from fashionops.stages import STAGES as STAGE_TABLE

STAGES: tuple[str, ...] = tuple(STAGE_TABLE)  # the DVC stages, in pipeline order
REMOTE_ENV = "FASHIONOPS_DVC_REMOTE"  # the DVC remote a flow pulls from and pushes to
PUSHED_MARKER = ".dvc/tmp/fashionops-pushed"  # remote + dvc.lock digest of the last successful push
STOP_GRACE_S = 20.0  # how long a stopped stage gets to clean up before SIGKILL
IDLE_S = 0.3  # a command quiet this long: its pending record is logged
# DVC's hint after every stage; the flow pushes itself (push_outputs) when a remote is named
DVC_HINTS = ("Use `dvc push` to send your updates to remote storage.",)

# A logger (levels kept) or a plain callback taking one record's text (INFO and above only).
LogFn = Callable[[str], None] | logging.Logger | logging.LoggerAdapter[Any]


def stage_env(flow_run_id: str | None = None, experiment: str | None = None) -> dict[str, str]:
    """Environment for stage subprocesses: unbuffered output, this interpreter's scripts on PATH,
    ``FASHIONOPS_FLOW_RUN_ID`` and ``DVC_EXP_NAME`` so MLflow tags the run with them."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    if flow_run_id:
        env["FASHIONOPS_FLOW_RUN_ID"] = str(flow_run_id)
    if experiment:
        env["DVC_EXP_NAME"] = experiment
    return env


def run_command(
    args: list[str], cwd: str | Path, env: dict[str, str] | None = None, log: LogFn | None = None
) -> tuple[int, list[str]]:
    """Run ``args`` in ``cwd``; relay its stdout+stderr to ``log`` as it arrives (one record per
    message, at its level: :class:`~fashionops.orchestration.relay.Relay`); (exit status, lines)."""
    lines: list[str] = []
    proc = subprocess.Popen(
        args,
        cwd=str(cwd),
        env=env or stage_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: stopping it reaches DVC's stage process too
    )
    assert proc.stdout is not None
    relay = Relay(lambda level, text: emit(log, level, text))
    try:
        for chunk in _read_lines(proc.stdout.fileno()):
            if chunk is None:
                relay.idle()
                continue
            lines.extend(chunk.lines)
            if log is not None:
                relay.feed(chunk.lines, whole=chunk.whole)
        if log is not None:
            relay.close()
    except BaseException:
        stop_process_group(proc)
        raise
    finally:
        proc.stdout.close()
    return proc.wait(), lines


class _Read(NamedTuple):
    lines: list[str]  # the complete lines of one read
    whole: bool  # the read ended at the end of a line (else the rest of its last line follows)


def _read_lines(fd: int) -> Iterator[_Read | None]:
    """The complete lines of each read of ``fd`` (``\\n``, ``\\r\\n`` or a progress bar's ``\\r``
    end a line), or None after :data:`IDLE_S` without output; ends at end of file."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    tail = ""
    while True:
        ready, _, _ = select.select([fd], [], [], IDLE_S)
        if not ready:
            yield None
            continue
        data = os.read(fd, 65536)
        text = tail + decoder.decode(data, final=not data)
        if not data:
            if text.strip("\r"):
                yield _Read([text.strip("\r")], True)
            return
        held = text.endswith("\r")  # maybe the first half of "\r\n": decide on the next read
        parts = re.split(r"\r\n|\r|\n", text[:-1] if held else text)
        tail = parts.pop() + ("\r" if held else "")
        if parts:
            yield _Read(parts, not tail.strip("\r"))


def emit(log: LogFn | None, level: int, text: str) -> None:
    """One record to ``log``: a logger gets its level, a plain callback INFO and above only."""
    if log is None:
        return
    if text in DVC_HINTS:
        level = logging.DEBUG
    if isinstance(log, (logging.Logger, logging.LoggerAdapter)):
        log.log(level, "%s", text)
    elif level >= logging.INFO:
        log(text)


def stop_process_group(proc: subprocess.Popen[bytes], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM ``proc``'s whole process group (DVC and the stage it runs: staging folders removed,
    worker pools stopped, the MLflow run marked KILLED), then SIGKILL whatever is left after
    ``grace_s``: no orphan keeps writing into the workspace."""
    _signal_group(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if proc.poll() is not None and not _group_alive(proc.pid):
            return
        time.sleep(0.1)
    _signal_group(proc.pid, signal.SIGKILL)
    proc.wait()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def dvc_command(*args: str) -> list[str]:
    """``dvc ...`` with this interpreter's DVC (no reliance on PATH)."""
    return [sys.executable, "-m", "dvc", *args]


def fashionops_command(*args: str) -> list[str]:
    """``fashionops ...`` with this interpreter's package (no reliance on PATH)."""
    return [sys.executable, "-m", "fashionops.cli", *args]


def run_stage(
    stage: str, workspace: str | Path, env: dict[str, str] | None = None, log: LogFn | None = None, force: bool = False
) -> dict[str, Any]:
    """Run one ``dvc.yaml`` stage through DVC (``dvc repro --single-item``).

    DVC skips a stage whose deps, params and outs match ``dvc.lock`` (``status: "skipped"``) or
    restores it from its run cache (``"restored"``); else it runs the command (``"ran"``).
    Raises :class:`StageFailed` with the stage's error message on a non-zero exit.
    """
    if stage not in STAGES:
        raise PipelineError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    args = ["repro", "--single-item", stage] + (["--force"] if force else [])
    start = time.monotonic()
    code, lines = run_command(dvc_command(*args), cwd=workspace, env=env, log=log)
    seconds = round(time.monotonic() - start, 2)
    if code != 0:
        raise StageFailed.from_output(stage, code, lines)
    text = "\n".join(lines)
    if f"Running stage '{stage}'" in text:
        status = "ran"
    elif "is cached - skipping run" in text:
        status = "restored"
    elif "didn't change, skipping" in text:
        status = "skipped"
    else:
        status = "unknown"
    return {"stage": stage, "status": status, "seconds": seconds}


def ensure_raw_data(
    workspace: str | Path,
    source: str | None = None,
    force: bool = False,
    env: dict[str, str] | None = None,
    log: LogFn | None = None,
) -> dict[str, Any]:
    """Import the catalogue (``fashionops import``) when ``data/raw.dvc`` is missing, or when
    ``force`` (a new ``source`` or a changed ``data.*`` param); otherwise leave it as it is.

    A fresh clone (``data/raw.dvc`` but no data) pulls the data from the DVC remote
    (:func:`dvc_remote`); with no remote, or one that does not hold the data, it imports the
    catalogue instead: an expected fallback, logged as one INFO line saying why (DVC's own
    ``ERROR:`` output of the failed pull is not relayed)."""
    params = workspace_params(workspace)
    raw = workspace_path(workspace, params.paths.raw_dir)
    dvc_file = raw.with_name(raw.name + ".dvc")
    if dvc_file.is_file() and not force and not source:
        if raw.exists():
            return {"imported": False, "dvc_file": str(dvc_file)}
        # A fresh clone: the .dvc file is committed but the data is not here yet; fetch it from
        # the DVC remote, and import from a local source if there is none or it lacks the data.
        remote = dvc_remote(workspace, env)
        if remote is None:
            emit(
                log,
                logging.INFO,
                f"{dvc_file.name}: data not here and no DVC remote to pull it from; importing the catalogue",
            )
        else:
            pull = ["pull", "-r", remote, str(dvc_file)]
            code, lines = run_command(dvc_command(*pull), cwd=workspace, env=env)  # its output: below
            if code == 0 and raw.exists():
                emit(log, logging.INFO, f"pulled {raw.name} ({dvc_file.name}) from DVC remote {remote!r}")
                return {"imported": False, "pulled": True, "dvc_file": str(dvc_file)}
            # expected on a first run: the remote does not hold this data (yet)
            why = error_message(lines).rstrip(":")
            emit(
                log,
                logging.INFO,
                f"{dvc_file.name}: not pulled from DVC remote {remote!r} ({why}); importing the catalogue",
            )
    args = fashionops_command("import", *(["--source", source] if source else []))
    code, lines = run_command(args, cwd=workspace, env=env, log=log)
    if code != 0:
        raise StageFailed.from_output("import", code, lines)
    return {"imported": True, "dvc_file": str(dvc_file)}


def remote_args(env: dict[str, str] | None = None) -> list[str]:
    """``["-r", name]`` for the team's DVC remote (``$FASHIONOPS_DVC_REMOTE``, which ``.stack/env``
    sets to ``stack``), else ``[]``: DVC's default remote."""
    name = (env if env is not None else os.environ).get(REMOTE_ENV, "").strip()
    return ["-r", name] if name else []


def dvc_remote(workspace: str | Path, env: dict[str, str] | None = None) -> str | None:
    """The DVC remote to pull from: ``$FASHIONOPS_DVC_REMOTE``, else the workspace's default
    remote (``dvc remote default``), else None."""
    named = remote_args(env)
    if named:
        return named[1]
    code, lines = run_command(dvc_command("remote", "default"), cwd=workspace, env=env)
    name = lines[-1].strip() if code == 0 and lines else ""
    return name or None


def push_outputs(workspace: str | Path, env: dict[str, str] | None = None, log: LogFn | None = None) -> str | None:
    """``dvc push`` the pipeline's data and models to ``$FASHIONOPS_DVC_REMOTE`` after a run, so
    another clone (or a deploy job) can ``dvc pull`` exactly these outputs; None when no remote is
    named (nothing pushed). Raises :class:`StageFailed` with DVC's message when the push fails: the
    outputs stay in the workspace and a retry pushes them."""
    args = remote_args(env)
    if not args:
        return None
    code, lines = run_command(dvc_command("push", *args), cwd=workspace, env=env, log=log)
    if code != 0:
        raise StageFailed.from_output("push", code, lines)
    return args[1]


def push_unless_pushed(ws: str, env: dict[str, str], nothing_changed: bool, log: LogFn) -> str | None:
    """``dvc push`` to ``$FASHIONOPS_DVC_REMOTE`` (None: no remote named); skipped when nothing
    changed and this ``dvc.lock`` was already pushed there (a failed push or a new remote is
    pushed by the next run, even one that changes nothing)."""
    marker = Path(ws) / PUSHED_MARKER
    lock = Path(ws) / "dvc.lock"
    state = " ".join(remote_args(env)) + " " + (hashlib.sha256(lock.read_bytes()).hexdigest() if lock.is_file() else "")
    if nothing_changed and marker.is_file() and marker.read_text() == state:
        emit(log, logging.INFO, f"nothing changed: dvc push skipped ({remote_args(env)[-1]} already has these outputs)")
        return None
    remote = push_outputs(ws, env=env, log=log)  # $FASHIONOPS_DVC_REMOTE, when set
    if remote is not None:
        write_text(marker, state)
    return remote


def save_experiment(
    workspace: str | Path,
    name: str,
    env: dict[str, str] | None = None,
    log: LogFn | None = None,
    message: str | None = None,
) -> str | None:
    """Record the workspace (code, ``params.yaml``, ``dvc.lock``, and the uncached metrics and
    plots under ``reports/``) as DVC experiment ``name`` (``dvc exp show`` lists it).

    Needs a git repository with a commit; returns the experiment's name, or None (with a log line
    saying why) when it cannot be saved, so a finished pipeline run is never failed by it.
    """
    args = ["exp", "save", "--force", "-n", name]
    for path in _untracked_pipeline_files(workspace):
        args += ["--include-untracked", path]
    if message:
        args += ["-m", message]
    code, lines = run_command(dvc_command(*args), cwd=workspace, env=env, log=log)
    if code != 0:
        emit(log, logging.WARNING, f"dvc exp save failed: {error_message(lines)}")
        return None
    return name


def _untracked_pipeline_files(workspace: str | Path) -> list[str]:
    """Files git does not track yet that an experiment needs: ``dvc.lock``, ``*.dvc``, the
    ``.gitignore`` files DVC writes, and the uncached metrics/plots under ``reports/``."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--others", "--exclude-standard"],
            cwd=str(workspace),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    keep = []
    for path in out.splitlines():
        name = Path(path).name
        if name in ("dvc.lock", ".gitignore") or name.endswith(".dvc") or path.startswith("reports/"):
            keep.append(path)
    return keep


def experiment_name(flow_run_name: str | None, prefix: str = "flow") -> str:
    """A DVC experiment name (a valid git ref part) for a flow run."""
    base = re.sub(r"[^A-Za-z0-9_-]+", "-", flow_run_name or time.strftime("%Y%m%d-%H%M%S")).strip("-")
    return f"{prefix}-{base}" if base else prefix
