"""What a pipeline run shows in the Prefect UI: the stages' reports as markdown, tables and links.

:func:`collect_reports` reads what the stages wrote (validation summary, metrics, per-class rows,
the MLflow run, the registration result); the other functions turn them into artifact content.
Nothing here imports Prefect.
"""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path
from typing import Any

from fashionops.config import flatten
from fashionops.orchestration.overrides import workspace_params, workspace_path

# Where the MLflow UI is served (`make mlflow-ui`); only used to build links.
MLFLOW_UI_ENV = "FASHIONOPS_MLFLOW_UI"
# MLflow 3's UI opens in its GenAI view unless the link (or the reader's last choice) says otherwise;
# the experiment's mlflow.experimentKind tag is not enough while the UI shows its workflow switch.
ML_VIEW = "?workflowType=machine_learning"
DEFAULT_MLFLOW_UI = "http://127.0.0.1:5000"


def read_json(path: Path) -> Any:
    """A JSON report, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def mlflow_ui_url() -> str:
    """Base URL of the MLflow UI (``$FASHIONOPS_MLFLOW_UI``, default the local ``make mlflow-ui``)."""
    return os.environ.get(MLFLOW_UI_ENV, DEFAULT_MLFLOW_UI).rstrip("/")


def collect_reports(workspace: str | Path) -> dict[str, Any]:
    """What the stages wrote: validation summary, metrics, per-class rows, the MLflow run (the one
    ``register`` logged the models into, else ``paths.run_file``) and the registration result;
    missing files are None."""
    paths = workspace_params(workspace).paths
    evaluate = workspace_path(workspace, paths.reports("evaluate"))
    per_class_path = evaluate / "per_class.csv"
    per_class = None
    if per_class_path.is_file():
        with per_class_path.open(newline="") as fh:
            per_class = list(csv.DictReader(fh))
    mlflow_run = read_json(workspace_path(workspace, paths.run_file))
    register = read_json(workspace_path(workspace, paths.reports("register")) / "result.json")
    if mlflow_run and register and register.get("run_id"):
        # The candidate's own run (a rerun of evaluate/index gets one beside train's): same experiment.
        mlflow_run = {**mlflow_run, "run_id": register["run_id"]}
    return {
        "validation": read_json(workspace_path(workspace, paths.reports("validation")) / "summary.json"),
        "metrics": read_json(evaluate / "metrics.json"),
        "per_class": per_class,
        "mlflow_run": mlflow_run,
        "register": register,
    }


def validation_markdown(summary: dict[str, Any] | None) -> str:
    """Markdown of ``reports/validation/summary.json``: verdict, counts, then one row per
    expectation (whatever its list is called), failures first."""
    if not summary:
        return "# Data validation\n\nNo validation summary was written."
    lines = ["# Data validation", ""]
    scalars = {k: v for k, v in summary.items() if not isinstance(v, (dict, list))}
    if scalars:
        lines += ["| field | value |", "| --- | --- |"]
        lines += [f"| {k} | {_cell(v)} |" for k, v in scalars.items()]
        lines.append("")
    for key, value in summary.items():
        rows = _rows(value)
        if not rows:
            if isinstance(value, list) and value:
                lines += [f"**{key}**: " + ", ".join(_cell(v) for v in value), ""]
            elif isinstance(value, dict) and value:
                lines += [f"## {key}", "", "| key | value |", "| --- | --- |"]
                lines += [f"| {k} | {_cell(v)} |" for k, v in value.items()]
                lines.append("")
            continue
        rows = sorted(rows, key=lambda r: _passed(r))
        cols = list(dict.fromkeys(c for r in rows for c in r))[:8]
        lines += [f"## {key}", "", "| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
        lines += ["| " + " | ".join(_cell(r.get(c)) for c in cols) + " |" for r in rows]
        lines.append("")
    return "\n".join(lines)


def _rows(value: Any) -> list[dict[str, Any]]:
    """A list of records, or a mapping of name -> record as records with a ``name``; else []."""
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return value
    if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
        return [{"name": k, **v} for k, v in value.items()]
    return []


def _passed(row: dict[str, Any]) -> bool:
    for key in ("success", "passed", "ok"):
        if key in row:
            return bool(row[key])
    return True


def _cell(value: Any) -> str:
    """A value as one markdown table cell (escaped, one line, at most 200 characters)."""
    if isinstance(value, float):
        text = f"{value:.4g}"
    elif isinstance(value, (dict, list)):
        text = json.dumps(value, default=str)
    else:
        text = str(value)
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= 200 else text[:197] + "..."


def metrics_table(metrics: dict[str, Any] | None) -> list[dict[str, Any]]:
    """A metrics file (``reports/evaluate/metrics.json``: ``test/accuracy``, ...; the index's on a
    refresh) as rows ``{"metric", "value"}``, in the file's order (nested keys dotted)."""
    return [
        {"metric": key, "value": value}
        for key, value in flatten(metrics or {}).items()
        if isinstance(value, (int, float, str, bool)) or value is None
    ]


def registry_links(
    register: dict[str, Any] | None, mlflow_run: dict[str, Any] | None, ui: str | None = None
) -> list[dict[str, str]]:
    """Links for the MLflow run and every registered model version in ``result.json``.

    Reads ``{"<role>": {"name": ..., "version": ...}}`` entries or a ``versions`` mapping,
    whichever the register stage wrote; each link is ``{"key", "link", "text"}``.
    """
    ui = (ui or mlflow_ui_url()).rstrip("/")
    links: list[dict[str, str]] = []
    if mlflow_run and mlflow_run.get("run_id"):
        exp = mlflow_run.get("experiment_id", "0")
        links.append(
            {
                "key": "mlflow-run",
                "text": f"MLflow run {mlflow_run['run_id']}",
                "link": f"{ui}/#/experiments/{exp}/runs/{mlflow_run['run_id']}{ML_VIEW}",
            }
        )
    for name, version in registered_versions(register):
        slug = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
        links.append(
            {
                "key": f"registered-{slug}",
                "text": f"{name} version {version}",
                "link": f"{ui}/#/models/{name}/versions/{version}{ML_VIEW}",
            }
        )
    return links


def registered_versions(register: dict[str, Any] | None) -> list[tuple[str, str]]:
    """(model name, version) pairs found in the register stage's ``result.json``."""
    found: list[tuple[str, str]] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            name, version = value.get("name"), value.get("version")
            if isinstance(name, str) and version is not None and not isinstance(version, (dict, list)):
                found.append((name, str(version)))
                return
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(register or {})
    return list(dict.fromkeys(found))
