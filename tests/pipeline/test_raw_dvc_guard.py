"""A failed validation leaves ``data/raw.dvc`` as it was (issue #18).

``dvc repro`` re-records a changed ``data/raw`` (the data source ``data/raw.dvc``) before it runs
``validate``; the validate stage puts the accepted record back when it fails. Real git + DVC
workspaces, the real ``fashionops import``, real ``dvc repro`` and the flow's stage runner.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from _workspace import dvc, git, make_workspace, run

from fashionops.orchestration.failures import StageFailed
from fashionops.orchestration.runner import fashionops_command, run_stage


def _truncate_an_image(ws: Path) -> str:
    victim = sorted((ws / "data/raw/images").glob("*.jpg"))[0]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 3])
    return victim.stem


def _imported_workspace(tmp_path: Path, catalogue: Path) -> Path:
    ws = make_workspace(tmp_path / "ws")
    run(fashionops_command("import", "--source", str(catalogue)), cwd=ws)
    git("add", "-A", cwd=ws)
    git("commit", "-q", "-m", "data", cwd=ws)
    return ws


def test_failed_validation_under_dvc_repro_leaves_raw_dvc_as_it_was(tmp_path, catalogue_300):
    ws = _imported_workspace(tmp_path, catalogue_300)
    before = (ws / "data/raw.dvc").read_bytes()
    victim = _truncate_an_image(ws)

    proc = dvc("repro", cwd=ws, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "failed to reproduce 'validate'" in out, out[-3000:]
    assert "Verifying data sources in stage: 'data/raw.dvc'" in out  # DVC re-recorded it ...
    assert (ws / "data/raw.dvc").read_bytes() == before  # ... and validate put it back
    assert victim in (ws / "reports/validation/summary.json").read_text()
    status = dvc("status", "data/raw.dvc", cwd=ws).stdout
    assert "modified" in status, status  # the record and the files differ: they do

    # the flow's path (dvc repro --single-item validate) leaves it as it was too
    with pytest.raises(StageFailed, match="validate"):
        run_stage("validate", ws)
    assert (ws / "data/raw.dvc").read_bytes() == before


def test_a_workspace_validated_before_accepted_records_restores_the_committed_one(tmp_path, catalogue_300):
    ws = _imported_workspace(tmp_path, catalogue_300)
    dvc("repro", "validate", cwd=ws)  # passes: dvc.lock records the validated data
    git("add", "-A", cwd=ws)
    git("commit", "-q", "-m", "validated", cwd=ws)
    shutil.rmtree(ws / ".dvc/tmp/fashionops")  # as in a workspace of an earlier version
    before = (ws / "data/raw.dvc").read_bytes()

    _truncate_an_image(ws)
    proc = dvc("repro", "validate", cwd=ws, check=False)
    assert proc.returncode != 0, proc.stdout[-3000:]
    assert (ws / "data/raw.dvc").read_bytes() == before


def test_validate_outside_dvc_repro_restores_nothing(tmp_path, catalogue_300):
    """`fashionops validate` by hand: no repro rewrote the DVC file, so it is left alone even when
    it differs from the accepted record (a user's own `dvc add`)."""
    ws = _imported_workspace(tmp_path, catalogue_300)
    _truncate_an_image(ws)
    dvc("add", "data/raw", cwd=ws)  # the user records the changed files on purpose
    recorded = (ws / "data/raw.dvc").read_bytes()
    proc = run([sys.executable, "-m", "fashionops.cli", "validate"], cwd=ws, check=False)
    assert proc.returncode == 1 and "error: " in proc.stderr, proc.stderr[-3000:]
    assert (ws / "data/raw.dvc").read_bytes() == recorded
