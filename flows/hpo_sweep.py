"""Prefect flow ``hpo-sweep``: an Optuna hyperparameter sweep over ``params.yaml``'s ``sweep.space``
(``fashionops sweep``), run in the workspace as a subprocess whose log lines keep their levels.

Publishes a table of the trials (state, validation macro-F1, the swept values, MLflow run), a
markdown summary naming the DVC experiment that holds the best trial's params
(``dvc exp apply <name>``), and links to the parent MLflow run and the best trial's run. The
logic lives in :mod:`fashionops.tuning` (``flow_steps``); this file only wires it into a flow.
``fashionops sweep`` holds the workspace's pipeline lock itself while it runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

# First: it sets this project's Prefect defaults, read when prefect is first imported.
from fashionops.orchestration.tasks import log_lines, publish_links  # isort: skip
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run
from pydantic import Field

from fashionops.orchestration.runner import stage_env
from fashionops.tuning.flow_steps import run_sweep_command, summary_markdown, sweep_links, trial_table


@task(name="sweep")
def sweep_task(
    workspace: str, trials: int | None, timeout_s: float | None, overrides: list[str], env: dict[str, str]
) -> dict[str, Any]:
    """``fashionops sweep`` in the workspace (not retried: a sweep is long and logs every trial)."""
    return run_sweep_command(workspace, trials, timeout_s, overrides, env=env, log=log_lines())


@flow(name="hpo-sweep", log_prints=True)
def hpo_sweep(
    trials: Annotated[int | None, Field(ge=1)] = None,
    timeout_s: Annotated[float | None, Field(gt=0)] = None,
    overrides: list[str] = [],  # noqa: B006 - never mutated; a list default shows as an empty list in the form
    workspace: str = ".",
) -> dict[str, Any]:
    """Tune the training params over params.yaml's sweep.space with Optuna (TPE sampler, median
    pruning on the validation macro-F1 of each epoch); every trial is an MLflow run nested under
    one parent run, and the best trial's params become a DVC experiment (`dvc exp apply <name>`).

    Args:
        trials: How many trials (empty: sweep.trials of params.yaml).
        timeout_s: Seconds after which no new trial starts (empty: sweep.timeout_s, none by default).
        overrides: section.key=value settings for every trial, e.g. train.epochs=5.
        workspace: The project checkout (with params.yaml and the prepared data) to run in.
    """
    logger = get_run_logger()
    ws = str(Path(workspace).resolve())
    run_id = flow_run.id
    summary = sweep_task(ws, trials, timeout_s, list(overrides), stage_env(flow_run_id=run_id))
    rows = trial_table(summary["tracking_uri"], summary["mlflow_run_id"])
    create_table_artifact(table=rows, key="hpo-sweep-trials", description="Trials: state, val macro-F1, params")
    create_markdown_artifact(markdown=summary_markdown(summary), key="hpo-sweep-summary", description="Best trial")
    publish_links(sweep_links(summary, summary["experiment_id"]))
    logger.info("== hpo-sweep finished: best %s, DVC experiment %s ==", summary["best"], summary["dvc_experiment"])
    return {**summary, "flow_run_id": str(run_id) if run_id else None, "workspace": ws, "trial_rows": rows}


if __name__ == "__main__":
    hpo_sweep()
