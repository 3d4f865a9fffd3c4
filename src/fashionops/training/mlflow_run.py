"""The train stage's MLflow run: resume the recorded one or start a new one, and log what a
reviewer needs (every param, device, library versions) as soon as it exists."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.loggers import MLFlowLogger

from fashionops.config import PathsConfig, TrackingConfig
from fashionops.environ import scoped_environ
from fashionops.tracking import configure, read_run_file, run_exists, run_tags, tracking_uri, write_run_file
from fashionops.training.runtime import library_versions


def resumable_run_id(tracking: TrackingConfig, paths: PathsConfig) -> str | None:
    """The MLflow run recorded in ``paths.run_file`` if it is in the configured store."""
    info = read_run_file(paths.run_file)
    uri = tracking_uri(tracking)
    if info and info.get("tracking_uri") == uri and run_exists(info["run_id"], uri):
        return str(info["run_id"])
    return None


def make_logger(tracking: TrackingConfig, paths: PathsConfig, run_id: str | None) -> MLFlowLogger:
    """Lightning's MLflow logger; lazy: the run is only created when first used (rank 0)."""
    return MLFlowLogger(
        experiment_name=tracking.experiment,
        tracking_uri=tracking_uri(tracking),
        run_id=run_id,
        tags=run_tags(paths) if run_id is None else None,
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

    Logs every param of ``run_config`` (``section.key`` -> value), the device and library
    versions, and writes ``paths.run_file`` at once so a killed run can be resumed into the same
    MLflow run.
    """
    from mlflow.entities import Param, RunTag

    experiment_id = configure(tracking)  # before the run exists: the experiment's artifact location
    uri = tracking_uri(tracking)
    # the logger's first use calls mlflow.set_tracking_uri, which exports MLFLOW_TRACKING_URI
    with scoped_environ(keep=("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")):
        client, run_id = logger.experiment, logger.run_id
    assert run_id is not None  # reading logger.experiment created the run
    write_run_file(paths.run_file, run_id, logger.experiment_id or experiment_id, uri)

    logged = client.get_run(run_id).data.params
    flat = {k: "" if v is None else str(v)[:6000] for k, v in run_config.items()}
    changed = sorted(k for k, v in flat.items() if k in logged and logged[k] != v)
    new = [Param(k, v) for k, v in flat.items() if k not in logged]
    for i in range(0, len(new), 100):  # MLflow's batch limit
        client.log_batch(run_id, params=new[i : i + 100])
    tags = {
        "stage": "train",
        "device": runtime["device_name"],
        "precision": runtime["precision"],
        "torch_threads": str(torch.get_num_threads()),
        **{f"version.{k}": v for k, v in library_versions().items()},
    }
    if resume:
        tags["resumed"] = "true"
        if changed:
            # MLflow params are immutable; record what a resume changed instead of failing
            tags["resume_changed_params"] = ",".join(changed)[:5000]
        client.update_run(run_id, status="RUNNING")
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    return run_id
