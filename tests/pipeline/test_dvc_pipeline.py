"""The DVC pipeline itself (dvc.yaml, dvc.lock, params, experiments, remote) on the workspace that
the training-pipeline flow reproduced stage by stage (fixture ``trained_workspace``)."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest
import yaml
from _workspace import copy_workspace, dvc, git, run

from fashionops.orchestration.runner import STAGES


def _ran(output: str) -> set[str]:
    return {s for s in STAGES if f"Running stage '{s}'" in output}


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_second_repro_runs_no_stage(trained_workspace, tmp_path):
    ws = copy_workspace(trained_workspace[0], tmp_path / "ws")
    start = time.monotonic()
    out = dvc("repro", cwd=ws).stdout
    seconds = time.monotonic() - start
    assert _ran(out) == set(), out
    assert all(f"'{s}' didn't change, skipping" in out for s in STAGES), out
    assert seconds < 15, f"a no-op dvc repro took {seconds:.1f} s"
    assert json.loads(dvc("status", "--json", cwd=ws).stdout or "{}") == {}


@pytest.mark.slow
def test_later_stages_reopen_the_run_that_train_recorded(trained_workspace):
    ws = trained_workspace[0]
    run_file = "reports/train/mlflow_run.json"  # paths.run_file: an output of train, not of the model
    lock = yaml.safe_load((ws / "dvc.lock").read_text())["stages"]
    assert run_file in {o["path"] for o in lock["train"]["outs"]}
    for stage in ("evaluate", "index", "register"):
        assert run_file in {d["path"] for d in lock[stage]["deps"]}, stage
    assert not (ws / "models/classifier/run.json").exists()
    run_id = json.loads((ws / run_file).read_text())["run_id"]
    assert json.loads((ws / "reports/register/result.json").read_text())["run_id"] == run_id


@pytest.mark.slow
def test_exp_run_with_a_train_param_reruns_train_and_what_follows(trained_workspace, tmp_path):
    ws = copy_workspace(trained_workspace[0], tmp_path / "ws")
    git("add", "-A", cwd=ws)
    git("commit", "-q", "-m", "baseline", cwd=ws)
    lock_before = yaml.safe_load((ws / "dvc.lock").read_text())["stages"]
    out = dvc("exp", "run", "-S", "train.seed=7", "-n", "seed-7", cwd=ws).stdout
    assert _ran(out) == {"train", "evaluate", "index", "register"}, out
    assert "'validate' didn't change" in out and "'prepare' didn't change" in out
    lock_after = yaml.safe_load((ws / "dvc.lock").read_text())["stages"]
    for stage in ("validate", "prepare"):
        assert lock_after[stage]["outs"] == lock_before[stage]["outs"]
    assert lock_after["train"]["params"]["params.yaml"]["train"]["seed"] == 7
    exps = json.loads(dvc("exp", "show", "--json", cwd=ws).stdout)
    found = [
        e
        for entry in exps
        for e in (entry.get("experiments") or [])
        if any(r.get("name") == "seed-7" for r in e.get("revs", []))
    ]
    assert found, json.dumps(exps)[:2000]
    rev = [r for r in found[0]["revs"] if r.get("name") == "seed-7"][0]
    assert rev["data"]["params"]["params.yaml"]["data"]["train"]["seed"] == 7


@pytest.mark.slow
def test_push_then_pull_in_a_fresh_clone_restores_outputs(trained_workspace, tmp_path):
    ws = copy_workspace(trained_workspace[0], tmp_path / "ws")
    remote = tmp_path / "remote"
    dvc("remote", "add", "-d", "-f", "storage", str(remote), cwd=ws)
    git("add", "-A", cwd=ws)
    git("commit", "-q", "-m", "pipeline outputs", cwd=ws)
    dvc("push", cwd=ws)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(ws), str(clone)], cwd=tmp_path)
    assert not (clone / "models/classifier/weights.pt").exists()
    dvc("pull", cwd=clone)
    for rel in (
        "data/raw/styles.csv",
        "data/prepared/images.npy",
        "data/validated/image_facts.parquet",
        "models/classifier/weights.pt",
        "models/index/index.ann",
    ):
        assert _md5(clone / rel) == _md5(ws / rel), rel
    assert "didn't change" in dvc("repro", "--dry", "train", cwd=clone).stdout
