"""A killed ``train`` leaves the previous model's state usable (issue #18): the old checkpoints stay
until the new run has its own, ``paths.run_file`` keeps naming the previous (finished) run, a run
stopped by SIGTERM ends KILLED, and a run left RUNNING by a SIGKILLed process is marked KILLED by
the next train. Real ``fashionops train`` processes on a tiny real subset, a real SQLite MLflow store.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import SMALL_CNN_TRAIN, mlflow_runs, params_for, train_command

pytestmark = pytest.mark.usefixtures("no_leaked_tracking_uri")
TINY = SMALL_CNN_TRAIN
# The run to be stopped: many epochs, so that it is still training when the signal comes; the runs
# that must finish do one short epoch.
LONG = ["train.epochs=20", "train.early_stopping_patience=20", "train.limit_batches=6"]
SHORT = ["train.epochs=1", "train.limit_batches=3"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, small_catalogue) -> Path:
    from fashionops.data.prepare import run_prepare

    params = params_for(tmp_path_factory.mktemp("kill_prepared"), small_catalogue, TINY)
    run_prepare(params.prepare, params.paths)
    return Path(params.paths.prepared_dir)


def _params(work: Path, prepared: Path, extra: list[str]):
    return params_for(work, None, TINY + [f"paths.prepared_dir={prepared}", *extra])


def _train(params) -> dict:
    from fashionops.training.stage import run_train

    return run_train(
        params.train, params.paths, params.tracking, balance=params.prepare.balance, run_config=params.flat()
    )


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _start_and_signal(params, sig: int, ready) -> tuple[subprocess.CompletedProcess, str]:
    """Run `fashionops train` (LONG), send ``sig`` as soon as ``ready(new_run_id)`` is true; returns
    (the finished process, the new run's id)."""
    before = set(mlflow_runs(params))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.Popen(
        train_command(params, TINY + LONG),
        cwd=Path(params.paths.reports_dir).parent,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 240
        new: list[str] = []
        while not (new and ready(new[0])):
            if proc.poll() is not None:
                pytest.fail(f"train exited ({proc.returncode}) before the signal: {proc.stderr.read()[-2000:]}")
            assert time.monotonic() < deadline, "train did not get there within 240 s"
            new = [r for r in mlflow_runs(params) if r not in before]
            time.sleep(0.02)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, "", err), new[0]


@pytest.mark.slow  # ~30 s: three trainings, one a real process
def test_sigkill_keeps_the_old_checkpoints_and_run_file_and_the_next_train_marks_the_run_killed(tmp_path, prepared):
    params = _params(tmp_path, prepared, SHORT)
    first = _train(params)
    ckpt_dir = Path(params.paths.classifier_dir) / "checkpoints"
    run_file_before = params.paths.run_file.read_bytes()
    old = {name: _digest(ckpt_dir / name) for name in ("best.ckpt", "last.ckpt")}

    # killed as soon as its MLflow run exists: before its first checkpoint (or, on a fast machine,
    # just after it); either way nothing of the previous run may be lost or mixed up
    killed, run_id = _start_and_signal(params, signal.SIGKILL, lambda run: True)
    assert killed.returncode == -signal.SIGKILL
    assert params.paths.run_file.read_bytes() == run_file_before, "run.json must keep naming the finished run"
    assert (ckpt_dir / "best.ckpt").is_file() and (ckpt_dir / "last.ckpt").is_file()
    from fashionops.training.callbacks import checkpoint_run

    recorded = checkpoint_run(ckpt_dir)["run_id"]
    if _digest(ckpt_dir / "last.ckpt") == old["last.ckpt"]:
        assert _digest(ckpt_dir / "best.ckpt") == old["best.ckpt"], "old checkpoints must stay until new ones exist"
        assert recorded == first["mlflow_run_id"]
    else:
        assert recorded == run_id, "new checkpoints must name the run they belong to"
    assert mlflow_runs(params)[run_id] == "RUNNING"  # nobody could end it

    third = _train(params)
    statuses = mlflow_runs(params)
    assert statuses[run_id] == "KILLED", "a run left RUNNING by a dead process is marked KILLED"
    assert statuses[first["mlflow_run_id"]] == statuses[third["mlflow_run_id"]] == "FINISHED"
    assert json.loads(params.paths.run_file.read_text())["run_id"] == third["mlflow_run_id"]
    assert json.loads((ckpt_dir / "mlflow_run.json").read_text())["run_id"] == third["mlflow_run_id"]
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["best.ckpt", "last.ckpt", "mlflow_run.json"]


@pytest.mark.slow  # ~30 s: two trainings, one a real process
def test_sigterm_ends_the_run_killed_and_keeps_the_run_file(tmp_path, prepared):
    params = _params(tmp_path, prepared, SHORT)
    first = _train(params)
    run_file_before = params.paths.run_file.read_bytes()
    ckpt_run = Path(params.paths.classifier_dir) / "checkpoints" / "mlflow_run.json"

    def training(run: str) -> bool:  # mid-fit: the new run's first checkpoint exists
        return ckpt_run.is_file() and json.loads(ckpt_run.read_text())["run_id"] == run

    stopped, run_id = _start_and_signal(params, signal.SIGTERM, training)
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert stopped.stderr.strip().splitlines()[-1].startswith("error: fashionops train terminated"), stopped.stderr
    assert "Traceback" not in stopped.stderr
    statuses = mlflow_runs(params)
    assert statuses[run_id] == "KILLED", statuses
    assert statuses[first["mlflow_run_id"]] == "FINISHED"
    assert params.paths.run_file.read_bytes() == run_file_before
