"""Prefect flow ``training-pipeline``: the DVC pipeline (validate -> prepare -> train -> evaluate ->
index -> register), one task per stage, each run through ``dvc repro --single-item`` so DVC decides
what is up to date. Run it with ``python flows/training_pipeline.py`` (``make run``) on an ephemeral
Prefect API, or deploy it with ``prefect.yaml``.

The logic lives in :mod:`fashionops.orchestration` (tasks in :mod:`fashionops.orchestration.tasks`);
this file only wires it into a flow: parameters (typed, with params.yaml's values as defaults:
:mod:`fashionops.orchestration.overrides`), the lock, artifacts and the flow's summary.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

# First: it sets this project's Prefect defaults, read when prefect is first imported.
from fashionops.orchestration.tasks import import_task, publish_links, publish_validation, stage_task  # isort: skip
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.client.orchestration import get_client
from prefect.runtime import deployment, flow_run
from pydantic import Field

from fashionops.orchestration.lock import workspace_lock
from fashionops.orchestration.overrides import (
    RUN_PARAMETERS,
    Attributes,
    Balance,
    DataLimit,
    Epochs,
    ImageSize,
    Label,
    MinImages,
    PresetName,
    apply_overrides,
    flow_overrides,
    run_defaults,
)
from fashionops.orchestration.reports import (
    collect_reports,
    metrics_table,
    mlflow_ui_url,
    registered_versions,
    registry_links,
)
from fashionops.orchestration.runner import (
    STAGES,
    experiment_name,
    push_unless_pushed,
    save_experiment,
    stage_env,
)


def publish_results(reports: dict[str, Any], register: dict[str, Any] | None) -> list[dict[str, str]]:
    """Metrics and per-class tables, links to the MLflow run and, when this run registered
    (``register``: its result.json, None when the register stage did not run), the registration
    and its versions (an earlier run's are not published again)."""
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
    links = registry_links(register, reports["mlflow_run"])
    publish_links(links)
    if register is not None:
        create_markdown_artifact(
            markdown="# Registration\n\n```json\n" + json.dumps(register, indent=2, default=str) + "\n```",
            key="registration",
            description="reports/register/result.json",
        )
    return links


def deployment_defaults() -> dict[str, Any]:
    """The defaults the deployment's form showed (its parameter schema, recorded by ``prefect
    deploy``); {} when this run is not from a deployment."""
    if deployment.id is None:
        return {}
    with get_client(sync_client=True) as client:
        schema = client.read_deployment(deployment.id).parameter_openapi_schema or {}
    properties = schema.get("properties", {})
    return {name: prop["default"] for name, prop in properties.items() if "default" in prop}


# The form's defaults: this checkout's params.yaml, read when the flow is imported (by
# `prefect deploy`, which records them in the deployment's parameter schema, and by each run).
FORM_DEFAULTS = run_defaults(Path(__file__).resolve().parents[1] / "params.yaml")


@flow(name="training-pipeline", log_prints=True)
def training_pipeline(
    label: Label = FORM_DEFAULTS["label"],
    labels: Attributes = FORM_DEFAULTS["labels"],
    min_images_per_class: MinImages = FORM_DEFAULTS["min_images_per_class"],
    backbone: str = FORM_DEFAULTS["backbone"],
    preset: PresetName = FORM_DEFAULTS["preset"],
    epochs: Epochs = FORM_DEFAULTS["epochs"],
    image_height: ImageSize = FORM_DEFAULTS["image_height"],
    image_width: ImageSize = FORM_DEFAULTS["image_width"],
    balance: Balance = FORM_DEFAULTS["balance"],
    promote: bool = FORM_DEFAULTS["promote"],
    data_limit: DataLimit = FORM_DEFAULTS["data_limit"],
    source: str = "",
    overrides: list[str] = [],  # noqa: B006 - never mutated; a list default shows as an empty list in the form
    workspace: str = ".",
    experiment: str = "",
    lock_timeout_s: Annotated[float, Field(ge=0)] = 3600.0,
) -> dict[str, Any]:
    """Validate, prepare, train, evaluate, index and register, as one traceable run.

    The form shows params.yaml's values (as they were when the deployment was made). A value
    changed there is written into the workspace's params.yaml (like `dvc exp run -S`), so DVC
    reruns exactly the stages it affects and skips the rest; a value left as the form showed it is
    not written, so params.yaml keeps its own, even if it was edited after deploying (to force a
    value equal to the default, use overrides, e.g. train.epochs=3). A run that changes nothing
    runs no stage and saves no DVC experiment; otherwise the run is saved as a DVC experiment and
    its MLflow run is tagged with this flow run.

    Args:
        label: Which catalogue column to classify: masterCategory (7 broad groups), subCategory
            (45) or articleType (141 product types).
        labels: Multi-attribute tagging: the attributes to tag, one head each on one backbone
            (label is always the first head; empty: label alone).
        min_images_per_class: Drop classes with fewer images than this before training.
        backbone: Image model to train: a timm model name (e.g. tf_efficientnet_lite0, resnet18)
            or a built-in small model.
        preset: A named recipe of training settings (`fashionops params --presets`); none: no preset.
            The keys a preset sets take its values, over params.yaml's and this form's.
        epochs: Passes over the training images.
        image_height: Height in pixels the images are resized to (catalogue images are 80).
        image_width: Width in pixels the images are resized to (catalogue images are 60).
        balance: How rare classes are compensated: none, class_weights (weighted loss),
            weighted_sampler, or oversample (augmented copies).
        promote: Whether a better model may become the @champion in the registry.
        data_limit: Train on a stratified sample of this many catalogue images (0: all).
        source: Catalogue folder to import first (empty: the catalogue already in data/raw).
        overrides: Any other setting as section.key=value, e.g. train.lr=0.0005.
        workspace: The project checkout (with dvc.yaml and params.yaml) to run in.
        experiment: Name of the DVC experiment to save (empty: derived from the flow run name).
        lock_timeout_s: How long to wait for another pipeline run in the same workspace to finish.
    """
    chosen = {name: value for name, value in locals().items() if name in RUN_PARAMETERS}  # first: only the parameters
    logger = get_run_logger()
    ws = str(Path(workspace).resolve())
    run_id = flow_run.id
    exp_name = experiment or experiment_name(flow_run.name)
    env = stage_env(flow_run_id=run_id, experiment=exp_name)
    requested = flow_overrides(extra=overrides, untouched=[FORM_DEFAULTS, deployment_defaults()], **chosen)
    with workspace_lock(ws, timeout_s=lock_timeout_s, owner=f"flow run {run_id}", log=logger.info):
        changed = apply_overrides(ws, requested)
        if changed:
            logger.info("params.yaml updated: %s", changed)
        data_changed = any(key.startswith("data.") for key in changed)
        imported = import_task(ws, source or None, data_changed, env)

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
        # Nothing changed (no param, no import, every stage up to date): another experiment would
        # be identical to the last one, and its registration is an older run's.
        nothing_changed = not changed and not imported["imported"] and all(s["status"] == "skipped" for s in stages)
        saved = None
        if not nothing_changed:
            saved = save_experiment(
                ws, exp_name, env=env, log=logger.info, message=f"training-pipeline flow run {run_id}"
            )
        pushed_to = push_unless_pushed(ws, env, nothing_changed, logger.info)

    reports = collect_reports(ws)
    registered = any(s["stage"] == "register" and s["status"] == "ran" for s in stages)
    register = reports["register"] if registered else None  # else an earlier run's registration
    links = publish_results(reports, register)
    summary = {
        "flow_run_id": str(run_id) if run_id else None,
        "workspace": ws,
        "nothing_changed": nothing_changed,
        "dvc_experiment": saved,
        "dvc_remote": pushed_to,
        "params_changed": changed,
        "imported": imported["imported"],
        "stages": {s["stage"]: s["status"] for s in stages},
        "ran": [s["stage"] for s in stages if s["status"] == "ran"],
        "skipped": [s["stage"] for s in stages if s["status"] in ("skipped", "restored")],
        "metrics": reports["metrics"],
        "mlflow_run_id": (reports["mlflow_run"] or {}).get("run_id"),
        "registered": [{"name": n, "version": v} for n, v in registered_versions(register)],
        "register": register,
        "links": {link["key"]: link["link"] for link in links},
    }
    _log_where_to_look(summary)
    return summary


def _log_where_to_look(summary: dict[str, Any]) -> None:
    """The run's final lines: stage statuses and where its experiment, models and reports are."""
    logger = get_run_logger()
    logger.info("== training-pipeline finished ==")
    logger.info("stages: %s", summary["stages"])
    if summary["nothing_changed"]:
        logger.info("nothing changed: no experiment saved, nothing registered (every stage was up to date)")
    else:
        logger.info("DVC experiment: %s  (dvc exp show)", summary["dvc_experiment"])
    for key, link in summary["links"].items():
        logger.info("%s: %s", key, link)
    logger.info("MLflow UI: make mlflow-ui, then %s", mlflow_ui_url())
    logger.info("reports: %s/reports/  (validation/, evaluate/, index/, register/result.json)", summary["workspace"])


if __name__ == "__main__":
    training_pipeline()
