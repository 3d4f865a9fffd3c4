"""The ``batch-scoring`` flow's logic: ``fashionops score`` run in the workspace, its summary read
back, and what the Prefect UI shows of it.

The command runs as a subprocess like every stage (:func:`~fashionops.orchestration.runner.run_command`:
its log lines keep their levels in the flow's log); it writes the summary beside the Parquet file
(``<out>.summary.json``, :func:`fashionops.batch.score.summary_path`), which :func:`run_scoring`
returns. Nothing here imports Prefect.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fashionops.batch.score import summary_path
from fashionops.config import ScoreConfig, load_params
from fashionops.orchestration.failures import PipelineError, StageFailed
from fashionops.orchestration.overrides import workspace_path
from fashionops.orchestration.reports import read_json, registry_links
from fashionops.orchestration.runner import LogFn, fashionops_command, run_command

SCORES_DIR = "scores"  # where a run without an output file writes, inside the workspace
FORM_KEYS = ("alias", "top_k", "neighbours", "batch_size", "record")  # score.* keys on the form


def score_defaults(params_path: str | Path) -> dict[str, Any]:
    """``score.*`` in ``params_path`` (config.py's defaults when the file is missing): the form's defaults."""
    path = Path(params_path)
    cfg = load_params(path).score if path.is_file() else ScoreConfig()
    return {key: getattr(cfg, key) for key in FORM_KEYS}


def score_overrides(values: dict[str, Any], defaults: dict[str, Any]) -> list[str]:
    """``score.key=value`` for each form value that differs from the default the form showed (a
    value left alone keeps the workspace's ``params.yaml``); the alias goes as ``--alias``."""
    return [
        f"score.{key}={json.dumps(value)}"
        for key, value in values.items()
        if key != "alias" and key in FORM_KEYS and value != defaults.get(key)
    ]


def default_out(data_dir: str) -> str:
    """``scores/<drop folder>-<UTC time>.parquet`` (relative to the workspace)."""
    name = Path(data_dir.rstrip("/")).name or "drop"
    return f"{SCORES_DIR}/{name}-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}.parquet"


def run_scoring(
    workspace: str | Path,
    data_dir: str,
    out: str,
    alias: str | None,
    overrides: list[str],
    env: dict[str, str] | None = None,
    log: LogFn | None = None,
) -> dict[str, Any]:
    """``fashionops score`` in ``workspace`` (``alias`` None: ``score.alias`` of its ``params.yaml``);
    its summary (``StageFailed`` with the command's own error when it exits non-zero)."""
    args = fashionops_command("score", "--data", data_dir, "--out", out)
    if alias:
        args += ["--alias", alias]
    for override in overrides:
        args += ["--set", override]
    code, lines = run_command(args, cwd=workspace, env=env, log=log)
    if code != 0:
        raise StageFailed.from_output("score", code, lines)
    path = summary_path(workspace_path(workspace, out))
    summary = read_json(path)
    if not isinstance(summary, dict):
        raise PipelineError(f"fashionops score exited 0 but wrote no summary at {path}")
    return summary


def summary_table(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The summary as rows ``{"what", "value"}`` (the flow's table artifact)."""
    rows = [
        ("drop", summary.get("data")),
        ("layout", summary.get("layout")),
        ("output", summary.get("out")),
        ("alias", summary.get("alias")),
        ("classifier", _version(summary.get("classifier"))),
        ("index", _version(summary.get("index"))),
        ("images", summary.get("images")),
        ("scored", summary.get("scored")),
        ("failed (listed with their reason)", summary.get("failed")),
        ("mean confidence", summary.get("mean_confidence")),
        ("seconds", summary.get("seconds")),
        ("images/s", summary.get("images_per_s")),
        ("recorded for drift monitoring", summary.get("recorded")),
    ]
    rows += [(f"predicted {label}", count) for label, count in (summary.get("labels") or {}).items()]
    return [{"what": what, "value": value} for what, value in rows]


def _version(entry: Any) -> str | None:
    if not isinstance(entry, dict):
        return None
    return f"{entry.get('name')} v{entry.get('version')}"


def scoring_links(summary: dict[str, Any]) -> list[dict[str, str]]:
    """Links to the scoring's MLflow run and the registered versions that scored."""
    run = {"run_id": summary.get("mlflow_run_id"), "experiment_id": summary.get("mlflow_experiment_id")}
    links = registry_links({"classifier": summary.get("classifier"), "index": summary.get("index")}, run)
    for link in links:
        if link["key"] == "mlflow-run":
            link["key"], link["text"] = "batch-scoring-run", f"MLflow batch-scoring run {run['run_id']}"
    return links
