"""`fashionops gx-init`: the command that recreates the committed Great Expectations context."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from fashionops.cli import main as fashionops_main

REPO = Path(__file__).resolve().parents[2]


def _files(gx_dir: Path) -> set[str]:
    return {str(p.relative_to(gx_dir)) for p in gx_dir.rglob("*") if p.is_file()}


def test_gx_init_creates_the_committed_context(tmp_path, monkeypatch, capsys):
    # The command line as a user types it, into a directory of their choice.
    target = tmp_path / "elsewhere" / "gx"
    proc = subprocess.run(
        [sys.executable, "-m", "fashionops.cli", "gx-init", "--gx-dir", str(target)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout) == {"gx_dir": str(target)}
    assert (target / "great_expectations.yml").is_file()
    # the same files as the committed gx/ (their content is checked in test_validate.py)
    assert _files(target) == _files(REPO / "gx")
    # without --gx-dir: paths.gx_dir of the params (default gx/), relative to the working directory
    monkeypatch.chdir(tmp_path)
    assert fashionops_main(["gx-init"]) == 0
    assert json.loads(capsys.readouterr().out) == {"gx_dir": str(tmp_path / "gx")}
    assert _files(tmp_path / "gx") == _files(REPO / "gx")
