"""The train stage's MLflow run: resume the recorded one or start a new one named for the flow run /
DVC experiment, and log what a reviewer needs (every param, the prepared split as dataset inputs,
device, library versions, MLflow's source tags) as soon as it exists."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.loggers import MLFlowLogger

from fashionops.config import PathsConfig, TrackingConfig
from fashionops.environ import scoped_environ
from fashionops.run_lineage import log_data_inputs, run_name
from fashionops.tracking import (
    configure,
    owner_tags,
    param_text,
    read_run_file,
    run_exists,
    run_tags,
    tracking_uri,
)
from fashionops.training.callbacks import checkpoint_run
from fashionops.training.runtime import library_versions


def resumable_run_id(tracking: TrackingConfig, paths: PathsConfig, ckpt_dir: str | Path) -> str | None:
    """The MLflow run the checkpoints in ``ckpt_dir`` belong to (recorded beside them; for
    checkpoints of older versions, the one in ``paths.run_file``) if it is in the configured store."""
    info = checkpoint_run(ckpt_dir) or read_run_file(paths.run_file)
    uri = tracking_uri(tracking)
    if info and info.get("tracking_uri") == uri and run_exists(info["run_id"], uri):
        return str(info["run_id"])
    return None


class StageMLFlowLogger(MLFlowLogger):
    """Lightning's MLflow logger, ending a run stopped by SIGTERM or Ctrl-C as KILLED, not FAILED.

    Lightning finalizes the loggers with ``"failed"`` while it handles any exception escaping
    ``fit``; a ``BaseException`` that is not an ``Exception`` (``errors.Terminated``,
    ``KeyboardInterrupt``, ``SystemExit``) means the run was stopped, not broken.
    """

    def finalize(self, status: str = "success") -> None:
        stopped = sys.exc_info()[1]
        if status == "failed" and stopped is not None and not isinstance(stopped, Exception):
            status = "KILLED"
        super().finalize(status)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        super().log_metrics({curve_name(k): v for k, v in metrics.items()}, step)


def curve_name(key: str) -> str:
    """A per-epoch metric's MLflow name, grouped like the stages' metrics: ``val_macro_f1`` ->
    ``val/macro_f1``, ``train_acc`` -> ``train/accuracy``, ``lr`` -> ``train/lr`` (history.csv keeps
    ``val_macro_f1``); others (Lightning's ``epoch``) unchanged. ``test/`` stays the evaluate stage's."""
    head, _, rest = key.partition("_")
    if head in ("train", "val") and rest:
        return f"{head}/{'accuracy' if rest == 'acc' else rest}"
    return "train/lr" if key == "lr" else key


def make_logger(tracking: TrackingConfig, paths: PathsConfig, run_id: str | None) -> MLFlowLogger:
    """Lightning's MLflow logger; lazy: the run is only created when first used (rank 0). A new
    run is named for the flow run / DVC experiment (:func:`~fashionops.run_lineage.run_name`)."""
    return StageMLFlowLogger(
        experiment_name=tracking.experiment,
        tracking_uri=tracking_uri(tracking),
        run_id=run_id,
        run_name=run_name("train") if run_id is None else None,
        tags={**run_tags(paths), **owner_tags()} if run_id is None else None,  # owner: from the start
        log_model=False,
    )


def start_tracking(
    tracking: TrackingConfig,
    paths: PathsConfig,
    logger: MLFlowLogger,
    resume: bool,
    runtime: dict[str, Any],
    run_config: dict[str, Any],
) -> str:
    """Open the logger's run and record what a reviewer needs; returns the run id.

    Logs every param of ``run_config`` (``section.key`` -> value, None as ""), the prepared split
    as dataset inputs, the lineage tags (:func:`~fashionops.tracking.run_tags`: a resumed run
    joins this execution), the device and library versions and the owner process
    (:func:`~fashionops.tracking.owner_tags`: a later train marks the run KILLED if that process
    died with the run open). ``paths.run_file`` is left alone: the
    stage writes it when the model is saved; a killed run is resumed from the run recorded beside
    its checkpoints.
    """
    from mlflow.entities import Param, RunTag

    configure(tracking)  # before the run exists: the experiment's artifact location
    # the logger's first use calls mlflow.set_tracking_uri, which exports MLFLOW_TRACKING_URI
    with scoped_environ(keep=("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")):
        client, run_id = logger.experiment, logger.run_id
    assert run_id is not None  # reading logger.experiment created the run

    logged = client.get_run(run_id).data.params
    flat = {k: param_text(v) for k, v in run_config.items()}
    changed = sorted(k for k, v in flat.items() if k in logged and logged[k] != v)
    new = [Param(k, v) for k, v in flat.items() if k not in logged]
    for i in range(0, len(new), 100):  # MLflow's batch limit
        client.log_batch(run_id, params=new[i : i + 100])
    tags = {
        **run_tags(paths),
        "stage": "train",
        "device": runtime["device_name"],
        "precision": runtime["precision"],
        "torch_threads": str(torch.get_num_threads()),
        **{f"version.{k}": v for k, v in library_versions().items()},
        **owner_tags(),
    }
    if resume:
        tags["resumed"] = "true"
        if changed:
            # MLflow params are immutable; record what a resume changed instead of failing
            tags["resume_changed_params"] = ",".join(changed)[:5000]
        client.update_run(run_id, status="RUNNING")
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    log_data_inputs(client, run_id, paths)
    return run_id


def run_record(tracking: TrackingConfig, logger: MLFlowLogger) -> dict[str, str]:
    """What ``paths.run_file`` and the checkpoints' run file hold: run id, experiment id, tracking URI."""
    assert logger.run_id is not None and logger.experiment_id is not None  # after start_tracking
    return {"run_id": logger.run_id, "experiment_id": logger.experiment_id, "tracking_uri": tracking_uri(tracking)}
