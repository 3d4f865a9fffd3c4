"""``train.strategy: ddp`` on the CPU (gloo): two real ``fashionops train`` processes on a real subset.

The launcher re-runs the command for rank 1, both ranks train on their shards, only rank 0 writes
files and talks to MLflow, the gathered validation metrics equal a single-process evaluation of
the saved best checkpoint, a killed DDP run resumes, and a rank that dies ends the whole run with
one ``error:`` line. ``small_cnn`` at 48x36 on the 300-image catalogue, one thread per rank.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from conftest import SMALL_CNN_TRAIN, mlflow_runs, params_for, train_command

pytestmark = pytest.mark.usefixtures("no_leaked_tracking_uri")
TINY = SMALL_CNN_TRAIN + [
    "train.cpu_threads=1",  # two ranks on two cores
]
DDP = ["train.strategy=ddp", "train.devices=2", "train.accelerator=cpu"]
ONE_EPOCH = ["train.epochs=1", "train.limit_batches=3"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, small_catalogue) -> Path:
    import pandas as pd

    from fashionops.data.prepare import run_prepare

    params = params_for(tmp_path_factory.mktemp("ddp_prepared"), small_catalogue, TINY)
    run_prepare(params.prepare, params.paths)
    prepared = Path(params.paths.prepared_dir)
    # an odd val split: a padded DistributedSampler would evaluate one sample twice
    index = pd.read_parquet(prepared / "index.parquet")
    val = index.index[(index["split"] == "val") & ~index["is_copy"].astype(bool)]
    if len(val) % 2 == 0:
        index.loc[val[0], "split"] = "test"
        index.to_parquet(prepared / "index.parquet", index=False)
    return prepared


def _params(work: Path, prepared: Path, extra: list[str]):
    return params_for(work, None, TINY + [f"paths.prepared_dir={prepared}", *extra])


def _workdir(params) -> Path:
    work = Path(params.paths.reports_dir).parent
    work.mkdir(parents=True, exist_ok=True)
    return work


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "LOCAL_RANK", "OMP_NUM_THREADS")}


def _client(params):
    from mlflow.tracking import MlflowClient

    from fashionops.tracking import tracking_uri

    return MlflowClient(tracking_uri(params.tracking))


def _run(params, extra: list[str], resume: bool = False) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        train_command(params, TINY + extra, resume),
        cwd=_workdir(params),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=420,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _history(params) -> list[dict[str, str]]:
    import csv

    with (params.paths.reports("train") / "history.csv").open() as fh:
        return list(csv.DictReader(fh))


def _single_process_validation(params, checkpoint: Path) -> dict[str, float]:
    """The val split evaluated in this process by the stage's own LightningModule and data module."""
    import lightning as L

    from fashionops.models.factory import build_model
    from fashionops.models.spec import ModelSpec
    from fashionops.training.datamodule import FashionDataModule, load_prepared
    from fashionops.training.lit_module import FashionLitModule

    spec = ModelSpec.read(params.paths.classifier_dir)
    model = build_model(spec, pretrained="none")
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    model.load_state_dict({k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")})
    model = model.to(memory_format=torch.channels_last)  # as the stage trains and validates on CPU
    data = load_prepared(params.paths.prepared_dir)
    lit = FashionLitModule(model, spec, params.train)
    dm = FashionDataModule.from_config(params.train, spec, data, channels_last=True)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.validate(lit, datamodule=dm, verbose=False)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


def test_train_shards_are_equal_and_eval_shards_cover_each_sample_once():
    from fashionops.training.datamodule import EpochRandomSampler, sample_weights
    from fashionops.training.distributed import EvalShardSampler

    labels = np.array([0] * 40 + [1] * 5 + [2] * 6)  # 51 samples: not a multiple of 2 or 4
    weights = sample_weights(labels, 3)
    for world in (2, 4):
        for w in (None, weights):
            whole = EpochRandomSampler(range(51), seed=3, weights=w)
            whole.set_epoch(5)
            shards = []
            for rank in range(world):
                s = EpochRandomSampler(range(51), seed=3, weights=w, rank=rank, world=world)
                s.set_epoch(5)
                shards.append(list(s))
                assert len(shards[-1]) == len(s) == -(-51 // world)  # equal steps on every rank
            # the shards together are the one-process epoch order (+ wrapped padding)
            merged = [shards[i % world][i // world] for i in range(51)]
            assert merged == list(whole)
        evaluated = sorted(i for rank in range(world) for i in EvalShardSampler(51, rank, world))
        assert evaluated == list(range(51)), "each validation sample exactly once, none padded"


def test_ddp_in_another_program_is_refused_before_anything_is_written(tmp_path, prepared):
    from fashionops.errors import FashionOpsError
    from fashionops.training.stage import run_train

    params = _params(tmp_path, prepared, DDP + ONE_EPOCH)
    with pytest.raises(FashionOpsError, match="fashionops train"):
        run_train(params.train, params.paths, params.tracking, run_config=params.flat())
    assert not Path(params.paths.classifier_dir).exists() and not mlflow_runs(params)


@pytest.mark.slow  # ~17-40 s on 2 shared cores: a two-process training and a validation
def test_ddp_train_writes_once_and_its_gathered_metrics_equal_one_process(tmp_path, prepared):
    from fashionops.training.datamodule import load_prepared

    params = _params(tmp_path, prepared, DDP + ONE_EPOCH)
    val_size = len(load_prepared(prepared).split("val"))
    # the run validates whole shards (limit 3 batches of 32 per rank), so it saw the whole split
    assert 2 <= val_size <= 2 * 3 * 32 and val_size % 2 == 1
    proc = _run(params, DDP + ONE_EPOCH)
    assert proc.stdout.count("fashionops train: summary") == 1, "rank 1 prints no summary"

    out, reports = Path(params.paths.classifier_dir), params.paths.reports("train")
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == [
        "checkpoints",
        "checkpoints/best.ckpt",
        "checkpoints/last.ckpt",
        "checkpoints/mlflow_run.json",
        "model_spec.json",
        "weights.pt",
    ]
    assert sorted(p.name for p in reports.iterdir()) == [
        "history.csv",
        "metrics.json",
        "mlflow_run.json",
        "summary.json",
    ]
    assert not list(Path(tmp_path).glob("**/lightning_logs")) and not list(Path(tmp_path).glob("**/mlruns"))
    metrics = json.loads((reports / "summary.json").read_text())
    assert metrics["processes"] == 2 and metrics["epochs_run"] == 1

    # MLflow: one run (rank 1 has no logger), each epoch metric logged once, FINISHED
    runs = mlflow_runs(params)
    assert list(runs.values()) == ["FINISHED"], runs
    run_id = next(iter(runs))
    assert json.loads(params.paths.run_file.read_text())["run_id"] == run_id == metrics["mlflow_run_id"]
    client = _client(params)
    assert len(client.get_metric_history(run_id, "val/macro_f1")) == 1
    assert len(client.get_metric_history(run_id, "train/loss")) == 1

    # the gathered validation metrics = one process evaluating the saved best checkpoint
    single = _single_process_validation(params, out / "checkpoints/best.ckpt")
    row = _history(params)[0]
    assert float(row["val_acc"]) == pytest.approx(single["val_acc"], abs=1e-6)
    assert float(row["val_macro_f1"]) == pytest.approx(single["val_macro_f1"], abs=1e-6)
    assert float(row["val_loss"]) == pytest.approx(single["val_loss"], rel=1e-5)
    assert metrics["best_val_macro_f1"] == pytest.approx(single["val_macro_f1"], abs=1e-6)
    # weights.pt is the best checkpoint's network
    weights = torch.load(out / "weights.pt", weights_only=True)
    best = torch.load(out / "checkpoints/best.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    for key, value in weights.items():
        assert torch.equal(value, best[f"model.{key}"]), key


def _child_pids(pid: int) -> list[int]:
    return [c.pid for c in psutil.Process(pid).children()]


def _start(params, extra: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        train_command(params, TINY + extra),
        cwd=_workdir(params),
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(proc: subprocess.Popen, ready, what: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"train exited ({proc.returncode}) before {what}: {proc.stderr.read()[-3000:]}")
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.05)


def _gone(pids: list[int], timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids):
            return True
        time.sleep(0.1)
    return False


@pytest.mark.slow  # ~55-100 s on 2 shared cores: three two-process trainings
def test_ddp_run_killed_after_an_epoch_resumes_and_matches_an_uninterrupted_run(tmp_path, prepared):
    extra = DDP + ["train.epochs=2", "train.limit_batches=3", "train.augment.crop_scale=0.2"]
    params = _params(tmp_path / "killed", prepared, extra)
    last = Path(params.paths.classifier_dir) / "checkpoints/last.ckpt"
    proc = _start(params, extra)
    try:
        _wait_for(proc, last.is_file, "the first checkpoint")
        ranks = _child_pids(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert ranks and _gone(ranks), "rank 1 must die with a SIGKILLed rank 0"
    assert int(torch.load(last, map_location="cpu", weights_only=True)["epoch"]) == 0, "killed after epoch 1"
    assert not params.paths.run_file.exists()

    _run(params, extra, resume=True)
    clean = _params(tmp_path / "clean", prepared, extra)
    _run(clean, extra)

    resumed_runs = mlflow_runs(params)
    assert list(resumed_runs.values()) == ["FINISHED"], "the resume continues the killed run"
    assert list(mlflow_runs(clean).values()) == ["FINISHED"]
    resumed, uninterrupted = _history(params), _history(clean)
    assert [r["epoch"] for r in resumed] == ["1", "2"]
    for a, b in zip(resumed, uninterrupted, strict=True):
        for col in ("train_loss", "val_loss", "val_acc", "val_macro_f1", "lr"):
            assert float(a[col]) == pytest.approx(float(b[col]), rel=1e-4, abs=1e-5), (a["epoch"], col)
    w_resumed = torch.load(Path(params.paths.classifier_dir) / "weights.pt", weights_only=True)
    w_clean = torch.load(Path(clean.paths.classifier_dir) / "weights.pt", weights_only=True)
    for key in w_clean:
        torch.testing.assert_close(w_resumed[key], w_clean[key], rtol=1e-4, atol=1e-5, msg=key)
    run_id = next(iter(resumed_runs))
    assert len(_client(params).get_metric_history(run_id, "val/macro_f1")) == 2


@pytest.mark.slow  # ~18-30 s: a two-process training whose rank 1 is killed
def test_a_dead_rank_ends_the_run_with_one_error_line(tmp_path, prepared):
    extra = DDP + ["train.epochs=30", "train.early_stopping_patience=30", "train.limit_batches=6"]
    params = _params(tmp_path, prepared, extra)
    ckpt_run = Path(params.paths.classifier_dir) / "checkpoints/mlflow_run.json"
    proc = _start(params, extra)
    try:
        _wait_for(proc, ckpt_run.is_file, "the first checkpoint")  # training is under way
        ranks = _child_pids(proc.pid)
        assert len(ranks) == 1
        os.kill(ranks[0], signal.SIGKILL)  # what the OOM killer does
        _, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, err[-3000:]
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: train: rank 1 of the training") and "SIGKILL" in lines[-1], err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert list(mlflow_runs(params).values()) == ["FAILED"]
    assert not params.paths.run_file.exists()
