"""A flow run pushes its outputs to the team's DVC remote (``$FASHIONOPS_DVC_REMOTE``) and a
fresh clone pulls from it; no remote named, nothing pushed; a failing push names the remote."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from _workspace import dvc, git, make_workspace

from fashionops.orchestration.failures import StageFailed
from fashionops.orchestration.runner import ensure_raw_data, push_outputs, stage_env


def _md5s(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


def test_outputs_go_to_the_named_remote_and_a_fresh_clone_pulls_them(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    data = ws / "data" / "raw"
    (data / "images").mkdir(parents=True)
    for i in range(3):
        (data / "images" / f"{i}.jpg").write_bytes(bytes([i]) * 100)
    (data / "styles.csv").write_text("id,articleType\n0,Tshirts\n1,Shirts\n2,Watches\n")
    dvc("add", "-q", "data/raw", cwd=ws)
    remote = tmp_path / "team-remote"
    dvc("remote", "add", "team", str(remote), cwd=ws)
    git("add", "-A", cwd=ws)
    git("commit", "-q", "-m", "data", cwd=ws)

    assert push_outputs(ws, env=stage_env()) is None  # no remote named: nothing pushed
    assert not remote.exists()
    env = {**stage_env(), "FASHIONOPS_DVC_REMOTE": "team"}
    assert push_outputs(ws, env=env) == "team"
    assert any(p.is_file() for p in remote.rglob("*"))

    clone = tmp_path / "clone"
    git("clone", "-q", str(ws), str(clone), cwd=tmp_path)
    result = ensure_raw_data(clone, env=env)  # a fresh clone: data/raw.dvc but no data -> pull
    assert result.get("pulled") is True
    assert _md5s(clone / "data" / "raw") == _md5s(data)


def test_a_failing_push_names_the_remote(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    (ws / "data" / "raw").mkdir(parents=True)
    (ws / "data" / "raw" / "x.txt").write_text("x")
    dvc("add", "-q", "data/raw", cwd=ws)
    with pytest.raises(StageFailed, match="nowhere"):
        push_outputs(ws, env={**stage_env(), "FASHIONOPS_DVC_REMOTE": "nowhere"})
