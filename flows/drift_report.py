"""Prefect flow ``drift-report``: ``fashionops drift`` on a window of the observation log against
the training reference of a registered pair; publishes the verdict per signal (table), links to
the offline HTML report and the MLflow run, and FAILS with the reason when a signal drifted.
Schedulable: ``monitor.cron`` in params.yaml (applied by ``scripts/ui.sh`` and ``fashionops stack up``).

The logic lives in :mod:`fashionops.orchestration.drift_report` (and :mod:`fashionops.monitoring`);
this file only wires it into a flow. No workspace lock: drift writes only its report folder, its
reference cache and the MLflow store.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

# First: it sets this project's Prefect defaults, read when prefect is first imported.
from fashionops.orchestration.tasks import RETRIES, log_lines, publish_links  # isort: skip
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run
from pydantic import Field

from fashionops.monitoring.drift import DriftDetected
from fashionops.orchestration.drift_report import drift_defaults, drift_links, run_drift_report, verdict_table
from fashionops.orchestration.runner import stage_env

FORM_DEFAULTS = drift_defaults(Path(__file__).resolve().parents[1] / "params.yaml")


@task(name="drift", **RETRIES)
def drift_task(
    workspace: str, last: int | None, since: str, source: str, alias: str, report_dir: str, env: dict[str, str]
) -> dict[str, Any]:
    """``fashionops drift`` in the workspace, its output in this task's log; the report it wrote."""
    return run_drift_report(
        workspace, last=last, since=since, source=source, alias=alias, report_dir=report_dir, env=env, log=log_lines()
    )


@flow(name="drift-report", log_prints=True)
def drift_report(
    last: Annotated[int | None, Field(ge=1)] = None,
    since: str = "",
    source: str = "",
    alias: str = FORM_DEFAULTS["alias"],
    report_dir: str = FORM_DEFAULTS["report_dir"],
    workspace: str = ".",
) -> dict[str, Any]:
    """Compare what the models saw (the observation log) with their training reference.

    Args:
        last: Window: only the latest N observations (empty: every observation in the window).
        since: Window: observations at or after this ISO time, e.g. 2026-12-01T00:00 (empty: any time).
        source: Window: only observations of this source, serve or score (empty: all).
        alias: The registered pair whose classifier's training data is the reference.
        report_dir: Where drift.html and drift.json go (relative to the workspace).
        workspace: The project checkout (with params.yaml) to run in.
    """
    logger = get_run_logger()
    ws = str(Path(workspace).resolve())
    env = stage_env(flow_run_id=flow_run.id)
    result = drift_task(ws, last, since, source, alias, report_dir, env)
    create_table_artifact(
        table=verdict_table(result),
        key="drift-verdict",
        description=f"drift verdict: {result['verdict']} ({result['window_size']} observations)",
    )
    publish_links(drift_links(result))
    summary = {
        "verdict": result["verdict"],
        "drifted": result["drifted"],
        "window_size": result["window_size"],
        "reference": result["reference"],
        "html": result["html"],
        "mlflow": result.get("mlflow"),
    }
    logger.info("summary: %s", summary)
    if result["verdict"] == "drift":
        raise DriftDetected(result["reason"] or f"drift detected in {', '.join(result['drifted'])}")
    logger.info("== drift-report finished: %s ==", result["verdict"])
    return summary


if __name__ == "__main__":
    drift_report()
