"""Prefect flow ``training-pipeline``: the DVC pipeline (validate -> prepare -> train -> evaluate ->
index -> register), one task per stage, each run through ``dvc repro --single-item`` so DVC decides
what is up to date. Run it with ``python flows/training_pipeline.py`` (``make run``) on an ephemeral
Prefect API, or deploy it with ``prefect.yaml``.

The logic lives in :mod:`fashionops.orchestration` (tasks in :mod:`fashionops.orchestration.tasks`);
this file only wires it into a flow: parameters, the lock, artifacts and the flow's summary.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

# First: it sets this project's Prefect defaults, read when prefect is first imported.
from fashionops.orchestration.tasks import import_task, publish_links, publish_validation, stage_task  # isort: skip
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run

from fashionops.orchestration.lock import workspace_lock
from fashionops.orchestration.overrides import apply_overrides, flow_overrides
from fashionops.orchestration.reports import (
    collect_reports,
    metrics_table,
    mlflow_ui_url,
    registered_versions,
    registry_links,
)
from fashionops.orchestration.runner import STAGES, experiment_name, push_outputs, save_experiment, stage_env


def publish_results(reports: dict[str, Any]) -> list[dict[str, str]]:
    """Metrics and per-class tables, links to the MLflow run and the registered versions."""
    if reports["metrics"]:
        create_table_artifact(
            table=metrics_table(reports["metrics"]),
            key="evaluation-metrics",
            description="Test-split metrics (reports/evaluate/metrics.json)",
        )
    if reports["per_class"]:
        create_table_artifact(
            table=reports["per_class"],
            key="per-class-metrics",
            description="Per-class precision/recall/F1 (reports/evaluate/per_class.csv)",
        )
    links = registry_links(reports["register"], reports["mlflow_run"])
    publish_links(links)
    if reports["register"] is not None:
        create_markdown_artifact(
            markdown="# Registration\n\n```json\n" + json.dumps(reports["register"], indent=2, default=str) + "\n```",
            key="registration",
            description="reports/register/result.json",
        )
    return links


@flow(name="training-pipeline", log_prints=True)
def training_pipeline(
    label: Literal["masterCategory", "subCategory", "articleType"] | None = None,
    min_images_per_class: int | None = None,
    backbone: str | None = None,
    preset: str | None = None,
    epochs: int | None = None,
    image_height: int | None = None,
    image_width: int | None = None,
    balance: Literal["none", "class_weights", "weighted_sampler", "oversample"] | None = None,
    promote: bool | None = None,
    data_limit: int | None = None,
    source: str | None = None,
    overrides: list[str] | None = None,
    workspace: str = ".",
    experiment: str | None = None,
    lock_timeout_s: float = 3600.0,
) -> dict[str, Any]:
    """Validate, prepare, train, evaluate, index and register, as one traceable run.

    Every parameter left empty keeps the value in params.yaml; the ones given are written into
    params.yaml (like `dvc exp run -S`), so DVC reruns exactly the stages they affect and skips
    the rest. The run is saved as a DVC experiment and its MLflow run is tagged with this flow run.

    Args:
        label: Which catalogue column to classify: masterCategory (7 broad groups), subCategory
            (45) or articleType (141 product types).
        min_images_per_class: Drop classes with fewer images than this before training.
        backbone: Image model to train: a timm model name (e.g. tf_efficientnet_lite0, resnet18)
            or a built-in small model.
        preset: A named recipe of training settings (`fashionops params --presets`).
        epochs: Passes over the training images.
        image_height: Height in pixels the images are resized to (catalogue images are 80).
        image_width: Width in pixels the images are resized to (catalogue images are 60).
        balance: How rare classes are compensated: none, class_weights (weighted loss),
            weighted_sampler, or oversample (augmented copies).
        promote: Whether a better model may become the @champion in the registry.
        data_limit: Train on a stratified sample of this many catalogue images (empty: all).
        source: Catalogue folder to import first (Kaggle layout or one folder per class).
        overrides: Any other setting as section.key=value, e.g. train.lr=0.0005.
        workspace: The project checkout (with dvc.yaml and params.yaml) to run in.
        experiment: Name of the DVC experiment to save (default: derived from the flow run name).
        lock_timeout_s: How long to wait for another pipeline run in the same workspace to finish.
    """
    logger = get_run_logger()
    ws = str(Path(workspace).resolve())
    run_id = flow_run.id
    exp_name = experiment or experiment_name(flow_run.name)
    env = stage_env(flow_run_id=run_id, experiment=exp_name)
    requested = flow_overrides(
        label=label,
        min_images_per_class=min_images_per_class,
        backbone=backbone,
        preset=preset,
        epochs=epochs,
        image_height=image_height,
        image_width=image_width,
        balance=balance,
        promote=promote,
        data_limit=data_limit,
        extra=overrides,
    )
    with workspace_lock(ws, timeout_s=lock_timeout_s, owner=f"flow run {run_id}", log=logger.info):
        changed = apply_overrides(ws, requested)
        if changed:
            logger.info("params.yaml updated: %s", changed)
        data_changed = any(key.startswith("data.") for key in changed)
        imported = import_task(ws, source, data_changed, env)

        stages: list[dict[str, Any]] = []
        for stage in STAGES:
            try:
                stages.append(stage_task(stage, ws, env))
            except Exception:
                if stage == "validate":
                    publish_validation(ws)  # the failing expectations, in the UI
                raise
            if stage == "validate":
                publish_validation(ws)
        saved = save_experiment(ws, exp_name, env=env, log=logger.info, message=f"training-pipeline flow run {run_id}")
        pushed_to = push_outputs(ws, env=env, log=logger.info)  # $FASHIONOPS_DVC_REMOTE, when set

    reports = collect_reports(ws)
    links = publish_results(reports)
    summary = {
        "flow_run_id": str(run_id) if run_id else None,
        "workspace": ws,
        "dvc_experiment": saved,
        "dvc_remote": pushed_to,
        "params_changed": changed,
        "imported": imported["imported"],
        "stages": {s["stage"]: s["status"] for s in stages},
        "ran": [s["stage"] for s in stages if s["status"] == "ran"],
        "skipped": [s["stage"] for s in stages if s["status"] in ("skipped", "restored")],
        "metrics": reports["metrics"],
        "mlflow_run_id": (reports["mlflow_run"] or {}).get("run_id"),
        "registered": [{"name": n, "version": v} for n, v in registered_versions(reports["register"])],
        "register": reports["register"],
        "links": {link["key"]: link["link"] for link in links},
    }
    _log_where_to_look(summary)
    return summary


def _log_where_to_look(summary: dict[str, Any]) -> None:
    """The run's final lines: stage statuses and where its experiment, models and reports are."""
    logger = get_run_logger()
    logger.info("== training-pipeline finished ==")
    logger.info("stages: %s", summary["stages"])
    logger.info("DVC experiment: %s  (dvc exp show)", summary["dvc_experiment"])
    for key, link in summary["links"].items():
        logger.info("%s: %s", key, link)
    logger.info("MLflow UI: make mlflow-ui, then %s", mlflow_ui_url())
    logger.info("reports: %s/reports/  (validation/, evaluate/, index/, register/result.json)", summary["workspace"])


if __name__ == "__main__":
    training_pipeline()
