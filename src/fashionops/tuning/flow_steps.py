"""What the ``hpo-sweep`` flow does besides starting it: run ``fashionops sweep`` in the workspace
as a subprocess (its log lines relayed at their levels), read back the summary it prints, and
turn the parent MLflow run's nested trial runs into the rows of a table artifact. Nothing here
imports Prefect."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fashionops.orchestration.failures import PipelineError, StageFailed, error_message
from fashionops.orchestration.reports import ML_VIEW, mlflow_ui_url
from fashionops.orchestration.runner import LogFn, fashionops_command, run_command
from fashionops.tuning.pruning import PARENT_TAG, STATE_TAG


def sweep_command(trials: int | None, timeout_s: float | None, overrides: list[str]) -> list[str]:
    """``fashionops sweep`` with the flow's parameters (None: params.yaml's ``sweep`` values)."""
    args = fashionops_command("sweep")
    if trials is not None:
        args += ["--trials", str(trials)]
    if timeout_s is not None:
        args += ["--timeout", str(timeout_s)]
    for override in overrides:
        args += ["--set", override]
    return args


def printed_summary(lines: list[str]) -> dict[str, Any]:
    """The JSON object the CLI printed last (``{`` on a line of its own, indented body, ``}``)."""
    for start in range(len(lines) - 1, -1, -1):
        if lines[start] == "{":
            try:
                result: dict[str, Any] = json.loads("\n".join(lines[start:]))
                return result
            except ValueError:
                break
    raise PipelineError("fashionops sweep printed no summary: " + error_message(lines))


def run_sweep_command(
    workspace: str | Path,
    trials: int | None,
    timeout_s: float | None,
    overrides: list[str],
    env: dict[str, str] | None = None,
    log: LogFn | None = None,
) -> dict[str, Any]:
    """Run ``fashionops sweep`` in ``workspace``; the summary it printed (raises ``StageFailed``
    with the command's error line when it fails)."""
    code, lines = run_command(sweep_command(trials, timeout_s, overrides), cwd=workspace, env=env, log=log)
    if code != 0:
        raise StageFailed.from_output("sweep", code, lines)
    return printed_summary(lines)


def trial_table(tracking_uri: str, parent_run_id: str) -> list[dict[str, Any]]:
    """One row per trial run nested under ``parent_run_id``: trial, state, value (best val macro-F1),
    epochs, the swept values and the MLflow run id, in trial order."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    parent = client.get_run(parent_run_id)
    prefix = "sweep.space."
    keys = [k[len(prefix) :] for k in parent.data.params if k.startswith(prefix)]
    runs = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'", max_results=10_000
    )
    rows = []
    for run in runs:
        tags, metrics, params = run.data.tags, run.data.metrics, run.data.params
        rows.append(
            {
                "trial": int(tags.get("sweep.trial", "-1")),
                "state": tags.get(STATE_TAG, run.info.status),
                "value": metrics.get("train/best_val_macro_f1"),
                "epochs": metrics.get("train/epochs"),
                **{key: params.get(key) for key in sorted(keys)},
                "mlflow_run_id": run.info.run_id,
            }
        )
    return sorted(rows, key=lambda r: int(r["trial"]))


def sweep_links(summary: dict[str, Any], experiment_id: str, ui: str | None = None) -> list[dict[str, str]]:
    """Link artifacts: the parent MLflow run and the best trial's run."""
    ui = (ui or mlflow_ui_url()).rstrip("/")
    links = [
        {
            "key": "mlflow-sweep-run",
            "text": f"MLflow sweep run {summary['run_name']}",
            "link": f"{ui}/#/experiments/{experiment_id}/runs/{summary['mlflow_run_id']}{ML_VIEW}",
        }
    ]
    best = summary.get("best") or {}
    if best.get("mlflow_run_id"):
        links.append(
            {
                "key": "mlflow-best-trial",
                "text": f"MLflow run of the best trial ({best['trial']})",
                "link": f"{ui}/#/experiments/{experiment_id}/runs/{best['mlflow_run_id']}{ML_VIEW}",
            }
        )
    return links


def summary_markdown(summary: dict[str, Any]) -> str:
    """The sweep's outcome: counts, the best trial and how to apply its DVC experiment."""
    best = summary.get("best")
    lines = [
        f"# Sweep {summary['run_name']}",
        "",
        f"{summary['trials']} trials: {summary['complete']} complete, {summary['pruned']} pruned, "
        f"{summary['failed']} failed.",
        "",
    ]
    if best:
        lines += [f"Best: trial {best['trial']}, validation macro-F1 **{best['val_macro_f1']:.4f}**", ""]
        lines += [f"- `{k}` = `{v}`" for k, v in best["params"].items()]
        lines.append("")
    if summary.get("dvc_experiment"):
        name = summary["dvc_experiment"]
        lines += [f"DVC experiment **{name}**: `dvc exp show` lists it; `dvc exp apply {name}` writes its params."]
    else:
        lines.append("No DVC experiment (no trial completed, or the workspace is not a git + DVC repository).")
    return "\n".join(lines)
