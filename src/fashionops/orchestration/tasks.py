"""Prefect tasks shared by the flows in ``flows/`` (``training-pipeline``, ``index-refresh``).

Each task wraps one function of this package: its output lines go to the task's run logger, and
it is retried (with exponential backoff) only when the failure is transient
(:func:`~fashionops.orchestration.failures.is_transient`): I/O or network trouble, never a
failed validation or a bad parameter.

Import this module before ``prefect`` (the flows do): it sets this project's Prefect defaults,
which Prefect reads once, when it is first imported.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypedDict

# Prefect's server telemetry heartbeat fails on a busy SQLite store ("database is locked");
# it is also noise for an offline project.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# The ephemeral API server (no PREFECT_API_URL) may take longer than the 20 s default to start on
# a busy machine.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.tasks import exponential_backoff

from fashionops.orchestration.failures import is_transient
from fashionops.orchestration.relay import line_level
from fashionops.orchestration.reports import collect_reports, validation_markdown
from fashionops.orchestration.runner import LogFn, ensure_raw_data, run_stage

__all__ = ["RETRIES", "import_task", "line_level", "log_lines", "stage_task"]

STAGE_RETRIES = 2
RETRY_BACKOFF_S = 10.0


class RetryOptions(TypedDict):
    """The retry settings of every pipeline task (keyword arguments of ``prefect.task``)."""

    retries: int
    retry_delay_seconds: Callable[[int], list[float]]
    retry_jitter_factor: float
    retry_condition_fn: Callable[[Any, Any, Any], bool]


def retry_on_transient(task_: Any, task_run: Any, state: Any) -> bool:
    """Retry condition: only I/O or network trouble; never a failed validation or bad params."""
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - the task's own exception, re-raised by result()
        transient = is_transient(exc)
        get_run_logger().info(
            "%s: %s", "retrying (transient)" if transient else "not retrying", str(exc).splitlines()[0]
        )
        return transient
    return False


RETRIES: RetryOptions = {
    "retries": STAGE_RETRIES,
    "retry_delay_seconds": exponential_backoff(RETRY_BACKOFF_S),
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": retry_on_transient,
}


def log_lines() -> LogFn:
    """Where a command's output goes: the current run's logger, each record at the level the
    command wrote it (:mod:`fashionops.orchestration.relay`), so warnings and errors stand out
    in the Prefect UI and progress-bar frames stay out of it."""
    logger: LogFn = get_run_logger()
    return logger


@task(name="import-catalogue", **RETRIES)
def import_task(workspace: str, source: str | None, force: bool, env: dict[str, str]) -> dict[str, Any]:
    """``fashionops import`` when the catalogue is not tracked yet (or a new source was given)."""
    return ensure_raw_data(workspace, source=source, force=force, env=env, log=log_lines())


@task(name="stage", task_run_name="{stage}", **RETRIES)
def stage_task(stage: str, workspace: str, env: dict[str, str]) -> dict[str, Any]:
    """One ``dvc.yaml`` stage through ``dvc repro --single-item``, output streamed to the run log."""
    result = run_stage(stage, workspace, env=env, log=log_lines())
    get_run_logger().info("stage %s: %s in %.1f s", stage, result["status"], result["seconds"])
    return result


def publish_validation(workspace: str) -> None:
    """The validation summary (``reports/validation/summary.json``) as a markdown artifact."""
    reports = collect_reports(workspace)
    if reports["validation"] is not None:
        create_markdown_artifact(
            markdown=validation_markdown(reports["validation"]),
            key="validation-summary",
            description="Great Expectations results (reports/validation/summary.json)",
        )


def publish_links(links: list[dict[str, str]]) -> None:
    """One link artifact per MLflow link (:func:`~fashionops.orchestration.reports.registry_links`)."""
    for link in links:
        create_link_artifact(
            link=link["link"], link_text=link["text"], key=link["key"], description="MLflow (`make mlflow-ui`)"
        )
