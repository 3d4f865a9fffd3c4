"""Prefect flow ``training-pipeline``: the DVC pipeline (validate -> prepare -> train -> evaluate ->
index -> register), one task per stage, each run through ``dvc repro --single-item`` so DVC decides
what is up to date. Run it with ``python flows/training_pipeline.py`` (``make run``) on an ephemeral
Prefect API, or deploy it with ``prefect.yaml``.

The logic lives in :mod:`fashionops.orchestration.pipeline`; this file only wires it into Prefect: logs, retries,
artifacts and the flow's summary.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

# Prefect's server telemetry heartbeat fails on a busy SQLite store ("database is locked");
# it is also noise for an offline project. Set before prefect is imported.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# The ephemeral API server (no PREFECT_API_URL) may take longer than the 20 s default to start on
# a busy machine.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact  # noqa: E402
from prefect.runtime import flow_run  # noqa: E402
from prefect.tasks import exponential_backoff  # noqa: E402

from fashionops.orchestration import pipeline  # noqa: E402

STAGE_RETRIES = 2
RETRY_BACKOFF_S = 10.0


def retry_on_transient(task_: Any, task_run: Any, state: Any) -> bool:
    """Retry condition: only I/O or network trouble; never a failed validation or bad params."""
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - the task's own exception, re-raised by result()
        transient = pipeline.is_transient(exc)
        get_run_logger().info(
            "%s: %s", "retrying (transient)" if transient else "not retrying", str(exc).splitlines()[0]
        )
        return transient
    return False


def _log_lines() -> Any:
    logger = get_run_logger()
    return lambda line: logger.info("%s", line)


@task(name="import-catalogue", retries=STAGE_RETRIES, retry_delay_seconds=exponential_backoff(RETRY_BACKOFF_S),
      retry_jitter_factor=0.5, retry_condition_fn=retry_on_transient)
def import_task(workspace: str, source: str | None, force: bool, env: dict[str, str]) -> dict[str, Any]:
    """``fashionops import`` when the catalogue is not tracked yet (or a new source was given)."""
    return pipeline.ensure_raw_data(workspace, source=source, force=force, env=env, log=_log_lines())


@task(name="stage", task_run_name="{stage}", retries=STAGE_RETRIES,
      retry_delay_seconds=exponential_backoff(RETRY_BACKOFF_S), retry_jitter_factor=0.5,
      retry_condition_fn=retry_on_transient)
def stage_task(stage: str, workspace: str, env: dict[str, str]) -> dict[str, Any]:
    """One ``dvc.yaml`` stage through ``dvc repro --single-item``, output streamed to the run log."""
    result = pipeline.run_stage(stage, workspace, env=env, log=_log_lines())
    get_run_logger().info("stage %s: %s in %.1f s", stage, result["status"], result["seconds"])
    return result


def publish_validation(workspace: str) -> None:
    reports = pipeline.collect_reports(workspace)
    if reports["validation"] is not None:
        create_markdown_artifact(
            markdown=pipeline.validation_markdown(reports["validation"]), key="validation-summary",
            description="Great Expectations results (reports/validation/summary.json)",
        )


def publish_results(workspace: str, reports: dict[str, Any]) -> list[dict[str, str]]:
    """Metrics and per-class tables, links to the MLflow run and the registered versions."""
    if reports["metrics"]:
        create_table_artifact(table=pipeline.metrics_table(reports["metrics"]), key="evaluation-metrics",
                              description="Test-split metrics (reports/evaluate/metrics.json)")
    if reports["per_class"]:
        create_table_artifact(table=reports["per_class"], key="per-class-metrics",
                              description="Per-class precision/recall/F1 (reports/evaluate/per_class.csv)")
    links = pipeline.registry_links(reports["register"], reports["mlflow_run"])
    for link in links:
        create_link_artifact(link=link["link"], link_text=link["text"], key=link["key"],
                             description="MLflow (`make mlflow-ui`)")
    if reports["register"] is not None:
        create_markdown_artifact(
            markdown="# Registration\n\n```json\n" + json.dumps(reports["register"], indent=2, default=str) + "\n```",
            key="registration", description="reports/register/result.json",
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
    exp_name = experiment or pipeline.experiment_name(flow_run.name)
    env = pipeline.stage_env(flow_run_id=run_id, experiment=exp_name)
    requested = pipeline.flow_overrides(
        label=label, min_images_per_class=min_images_per_class, backbone=backbone, preset=preset,
        epochs=epochs, image_height=image_height, image_width=image_width, balance=balance,
        promote=promote, data_limit=data_limit, extra=overrides,
    )
    with pipeline.workspace_lock(ws, timeout_s=lock_timeout_s, owner=f"flow run {run_id}", log=logger.info):
        changed = pipeline.apply_overrides(ws, requested)
        if changed:
            logger.info("params.yaml updated: %s", changed)
        data_changed = any(key.startswith("data.") for key in changed)
        imported = import_task(ws, source, data_changed, env)

        stages: list[dict[str, Any]] = []
        for stage in pipeline.STAGES:
            try:
                stages.append(stage_task(stage, ws, env))
            except Exception:
                if stage == "validate":
                    publish_validation(ws)  # the failing expectations, in the UI
                raise
            if stage == "validate":
                publish_validation(ws)
        saved = pipeline.save_experiment(ws, exp_name, env=env, log=logger.info,
                                         message=f"training-pipeline flow run {run_id}")

    reports = pipeline.collect_reports(ws)
    links = publish_results(ws, reports)
    summary = {
        "flow_run_id": str(run_id) if run_id else None,
        "workspace": ws,
        "dvc_experiment": saved,
        "params_changed": changed,
        "imported": imported["imported"],
        "stages": {s["stage"]: s["status"] for s in stages},
        "ran": [s["stage"] for s in stages if s["status"] == "ran"],
        "skipped": [s["stage"] for s in stages if s["status"] in ("skipped", "restored")],
        "metrics": reports["metrics"],
        "mlflow_run_id": (reports["mlflow_run"] or {}).get("run_id"),
        "registered": [{"name": n, "version": v} for n, v in pipeline.registered_versions(reports["register"])],
        "register": reports["register"],
        "links": {link["key"]: link["link"] for link in links},
    }
    return summary


def _print_where_to_look(summary: dict[str, Any]) -> None:
    ws = summary["workspace"]
    print("\n== training-pipeline finished ==")
    print(f"stages: {summary['stages']}")
    print(f"DVC experiment: {summary['dvc_experiment']}  (dvc exp show)")
    for key, link in summary["links"].items():
        print(f"{key}: {link}")
    print(f"MLflow UI: make mlflow-ui, then {pipeline.mlflow_ui_url()}")
    print(f"reports: {ws}/reports/  (validation/, evaluate/, index/, register/result.json)")


if __name__ == "__main__":
    _print_where_to_look(training_pipeline())
