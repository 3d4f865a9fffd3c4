"""Prefect flow ``index-refresh``: rebuild the visual-search index for a changed catalogue with the
@champion classifier as embedder, without retraining, and register it paired with that same
classifier version (``fashionops.registry.register.register_index_for``).

Steps: (import a new catalogue) -> validate it (DVC stage) -> fetch @champion -> build the index
-> register it. The logic lives in :mod:`fashionops.orchestration.refresh` (shared tasks in
:mod:`fashionops.orchestration.tasks`); this file only wires it into a flow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

# First: it sets this project's Prefect defaults, read when prefect is first imported.
from fashionops.orchestration.tasks import (  # isort: skip
    RETRIES,
    import_task,
    log_lines,
    publish_links,
    publish_validation,
    stage_task,
)
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run
from pydantic import Field

from fashionops.orchestration.lock import workspace_lock
from fashionops.orchestration.refresh import REFRESH_DIR, build_refresh_index, run_refresh_step
from fashionops.orchestration.reports import metrics_table, registry_links
from fashionops.orchestration.runner import stage_env


@task(name="fetch-champion", **RETRIES)
def fetch_champion_task(workspace: str, alias: str, env: dict[str, str]) -> dict[str, Any]:
    """Download the classifier holding ``alias`` from the MLflow registry."""
    dest = str(Path(workspace) / REFRESH_DIR / "embedder")
    return run_refresh_step(
        ["fetch-champion", "--dest", dest, "--alias", alias], workspace, env=env, log=log_lines(), name="fetch-champion"
    )


@task(name="build-index", **RETRIES)
def build_index_task(workspace: str, embedder_dir: str, env: dict[str, str]) -> dict[str, Any]:
    """Embed the catalogue with the champion and build the tuned Annoy index."""
    return build_refresh_index(workspace, embedder_dir, env=env, log=log_lines())


@task(name="register-index", **RETRIES)
def register_index_task(
    workspace: str, index_dir: str, report_dir: str, classifier_version: str, env: dict[str, str]
) -> dict[str, Any]:
    """Register the index as a new visual-search version paired with the champion classifier."""
    return run_refresh_step(
        [
            "register-index",
            "--index-dir",
            index_dir,
            "--classifier-version",
            classifier_version,
            "--set",
            f"paths.reports_dir={report_dir}",
        ],
        workspace,
        env=env,
        log=log_lines(),
        name="register-index",
    )


@flow(name="index-refresh", log_prints=True)
def index_refresh(
    source: str = "",
    alias: str = "champion",
    workspace: str = ".",
    lock_timeout_s: Annotated[float, Field(ge=0)] = 3600.0,
) -> dict[str, Any]:
    """Rebuild the visual-search index for the current (or a newly imported) catalogue with the
    @champion classifier, without retraining, and register it paired with that classifier.

    Args:
        source: Catalogue folder to import first (empty: the catalogue already in data/raw).
        alias: Which registered classifier embeds the catalogue (champion by default).
        workspace: The project checkout (with dvc.yaml and params.yaml) to run in.
        lock_timeout_s: How long to wait for another pipeline run in the same workspace to finish.
    """
    logger = get_run_logger()
    ws = str(Path(workspace).resolve())
    run_id = flow_run.id
    env = stage_env(flow_run_id=run_id)
    with workspace_lock(ws, timeout_s=lock_timeout_s, owner=f"index-refresh {run_id}", log=logger.info):
        imported = import_task(ws, source or None, bool(source), env)
        try:
            validated = stage_task("validate", ws, env)  # a changed catalogue is validated first
        finally:
            publish_validation(ws)
        champion = fetch_champion_task(ws, alias, env)
        built = build_index_task(ws, champion["model_dir"], env)
        registered = register_index_task(ws, built["index_dir"], built["report_dir"], champion["version"], env)

    if built["metrics"]:
        create_table_artifact(
            table=metrics_table(built["metrics"]),
            key="index-refresh-metrics",
            description="Recall and latency of the rebuilt index",
        )
    links = registry_links({"index": registered["index"], "classifier": registered["classifier"]}, None)
    publish_links(links)
    summary = {
        "flow_run_id": str(run_id) if run_id else None,
        "workspace": ws,
        "imported": imported["imported"],
        "validate": validated["status"],
        "classifier": registered["classifier"],
        "index": registered["index"],
        "moved_aliases": registered["moved_aliases"],
        "aliases": registered["aliases"],
        "metrics": built["metrics"],
        "links": {link["key"]: link["link"] for link in links},
    }
    logger.info("== index-refresh finished ==")
    logger.info("summary: %s", summary)
    return summary


if __name__ == "__main__":
    index_refresh()
