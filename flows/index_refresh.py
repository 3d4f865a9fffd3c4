"""Prefect flow ``index-refresh``: rebuild the visual-search index for a changed catalogue with the
@champion classifier as embedder, without retraining, and register it paired with that same
classifier version (``fashionops.registry.register.register_index_for``).

Steps: (import a new catalogue) -> validate it (DVC stage) -> fetch @champion -> build the index
-> register it. Logic in :mod:`fashionops.orchestration.pipeline`; this file wires it into Prefect.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

# The shared tasks live in training_pipeline.py next to this file, whoever loads it.
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # see training_pipeline.py
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.artifacts import create_link_artifact, create_table_artifact  # noqa: E402
from prefect.runtime import flow_run  # noqa: E402
from prefect.tasks import exponential_backoff  # noqa: E402

from fashionops.orchestration import pipeline  # noqa: E402
from training_pipeline import (  # noqa: E402
    RETRY_BACKOFF_S,
    STAGE_RETRIES,
    _log_lines,
    import_task,
    publish_validation,
    retry_on_transient,
    stage_task,
)

RETRIES = dict(retries=STAGE_RETRIES, retry_delay_seconds=exponential_backoff(RETRY_BACKOFF_S),
               retry_jitter_factor=0.5, retry_condition_fn=retry_on_transient)


@task(name="fetch-champion", **RETRIES)
def fetch_champion_task(workspace: str, alias: str, env: dict[str, str]) -> dict[str, Any]:
    """Download the classifier holding ``alias`` from the MLflow registry."""
    dest = str(Path(workspace) / pipeline.REFRESH_DIR / "embedder")
    return pipeline.run_refresh_step(["fetch-champion", "--dest", dest, "--alias", alias], workspace,
                                     env=env, log=_log_lines(), name="fetch-champion")


@task(name="build-index", **RETRIES)
def build_index_task(workspace: str, embedder_dir: str, env: dict[str, str]) -> dict[str, Any]:
    """Embed the catalogue with the champion and build the tuned Annoy index."""
    return pipeline.build_refresh_index(workspace, embedder_dir, env=env, log=_log_lines())


@task(name="register-index", **RETRIES)
def register_index_task(workspace: str, index_dir: str, report_dir: str, classifier_version: str,
                        env: dict[str, str]) -> dict[str, Any]:
    """Register the index as a new visual-search version paired with the champion classifier."""
    return pipeline.run_refresh_step(
        ["register-index", "--index-dir", index_dir, "--classifier-version", classifier_version,
         "--set", f"index.report_dir={report_dir}"],
        workspace, env=env, log=_log_lines(), name="register-index")


@flow(name="index-refresh", log_prints=True)
def index_refresh(
    source: str | None = None,
    alias: str = "champion",
    workspace: str = ".",
    lock_timeout_s: float = 3600.0,
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
    env = pipeline.stage_env(flow_run_id=run_id)
    with pipeline.workspace_lock(ws, timeout_s=lock_timeout_s, owner=f"index-refresh {run_id}", log=logger.info):
        imported = import_task(ws, source, bool(source), env)
        try:
            validated = stage_task("validate", ws, env)  # a changed catalogue is validated first
        finally:
            publish_validation(ws)
        champion = fetch_champion_task(ws, alias, env)
        built = build_index_task(ws, champion["model_dir"], env)
        registered = register_index_task(ws, built["index_dir"], built["report_dir"], champion["version"], env)

    if built["metrics"]:
        create_table_artifact(table=pipeline.metrics_table(built["metrics"]), key="index-refresh-metrics",
                              description="Recall and latency of the rebuilt index")
    links = pipeline.registry_links({"index": registered["index"], "classifier": registered["classifier"]}, None)
    for link in links:
        create_link_artifact(link=link["link"], link_text=link["text"], key=link["key"],
                             description="MLflow (`make mlflow-ui`)")
    return {
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


if __name__ == "__main__":
    print(index_refresh())
