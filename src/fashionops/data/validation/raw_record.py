"""Keep ``data/raw.dvc`` on the last accepted catalogue when a validation fails.

``dvc repro`` reproduces the data source ``data/raw.dvc`` before the stages that read
``data/raw``: when the files changed, DVC 3 saves and commits them and rewrites ``data/raw.dvc``
(``Verifying data sources in 'data/raw.dvc'``), so a corrupted catalogue is recorded before
``validate`` can refuse it. DVC offers no hook before that step, so the record is put back
afterwards: the DVC file's bytes are kept as the *accepted record* whenever a catalogue is
accepted (``fashionops import`` wrote it, or a validation passed on it), in
``.dvc/tmp/fashionops/<path>.accepted``; a failing validation run by ``dvc repro`` that finds
the DVC file rewritten during that repro (modified after the ``dvc repro`` process started)
writes the accepted bytes back (in a workspace without an accepted record yet: the git HEAD
version, if ``dvc.lock`` says that one was validated). ``dvc status`` then shows ``data/raw`` as
modified, which it is.

Outside ``dvc repro`` (``fashionops validate``, or the flow's ``dvc repro --single-item validate``,
which does not reproduce the data source) nothing rewrote the DVC file and nothing is restored.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import yaml

from fashionops.atomic import atomic_path

log = logging.getLogger(__name__)


def dvc_file_of(raw_dir: str | Path) -> Path:
    """``data/raw`` -> ``data/raw.dvc`` (what ``dvc add`` writes)."""
    raw = Path(raw_dir).expanduser().resolve()
    return raw.with_name(raw.name + ".dvc")


def _dvc_root(path: Path) -> Path | None:
    return next((parent for parent in path.parents if (parent / ".dvc").is_dir()), None)


def _accepted_copy(dvc_file: Path) -> Path | None:
    """Where the accepted bytes of ``dvc_file`` are kept, None outside a DVC repository."""
    root = _dvc_root(dvc_file)
    if root is None:
        return None
    key = dvc_file.relative_to(root).as_posix().replace("/", "__")
    return root / ".dvc" / "tmp" / "fashionops" / f"{key}.accepted"


def _committed_validated_record(dvc_file: Path) -> bytes | None:
    """The git HEAD version of ``dvc_file`` if it records the data ``dvc.lock`` says was validated
    (workspaces validated before accepted records were kept), else None."""
    root = _dvc_root(dvc_file)
    if root is None or not (root / "dvc.lock").is_file():
        return None
    rel = dvc_file.relative_to(root).as_posix()
    try:
        head = subprocess.run(["git", "show", f"HEAD:{rel}"], cwd=root, capture_output=True, timeout=30, check=True)
        outs = (yaml.safe_load(head.stdout) or {}).get("outs") or [{}]
        stages = (yaml.safe_load((root / "dvc.lock").read_text()) or {}).get("stages") or {}
    except (OSError, subprocess.SubprocessError, yaml.YAMLError):
        return None
    data_path = rel[: -len(".dvc")]
    validated = {
        dep.get("md5") for dep in (stages.get("validate") or {}).get("deps", []) if dep.get("path") == data_path
    }
    return head.stdout if outs[0].get("md5") in validated else None


def _write_bytes(path: Path, data: bytes) -> None:
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
        tmp.chmod(mode)  # a temp file is private (0600); keep the file's own mode


def accept_record(raw_dir: str | Path) -> Path | None:
    """Keep the current bytes of ``raw_dir``'s DVC file as the accepted record; returns the copy."""
    dvc_file = dvc_file_of(raw_dir)
    copy = _accepted_copy(dvc_file)
    if copy is None or not dvc_file.is_file():
        return None
    _write_bytes(copy, dvc_file.read_bytes())
    return copy


def _repro_started_at() -> float | None:
    """Start time of the ``dvc repro`` process running this one (an ancestor), None if there is none."""
    import psutil

    try:
        for proc in psutil.Process().parents():
            cmdline = proc.cmdline()
            if "repro" in cmdline and any(Path(part).name == "dvc" for part in cmdline):  # dvc / python -m dvc
                return float(proc.create_time())
    except (psutil.Error, OSError):
        return None
    return None


def restore_accepted_record(raw_dir: str | Path) -> bool:
    """After a failed validation: put the accepted record back into ``raw_dir``'s DVC file if the
    ``dvc repro`` running this validation rewrote it; returns whether it did."""
    dvc_file = dvc_file_of(raw_dir)
    started = _repro_started_at()
    if started is None or not dvc_file.is_file() or dvc_file.stat().st_mtime < started:
        return False  # not under dvc repro, or the DVC file was written before it (an import, a user)
    copy = _accepted_copy(dvc_file)
    accepted = copy.read_bytes() if copy is not None and copy.is_file() else _committed_validated_record(dvc_file)
    if accepted is None or dvc_file.read_bytes() == accepted:
        return False
    _write_bytes(dvc_file, accepted)
    log.warning(
        "%s: dvc repro recorded the catalogue that failed validation; restored the last accepted record", dvc_file
    )
    return True
