"""The ``drift-report`` flow's logic: ``fashionops drift`` run in the workspace as a subprocess
(its log lines keep their levels in the flow's log), its ``drift.json`` read back, and what the
Prefect UI shows of it (the verdict table, links to the HTML report and the MLflow run).

Exit status 1 with a fresh ``drift.json`` whose verdict is ``drift`` is a drift (the report is
the result; the flow then fails with the command's one-line reason); any other failure is a
:class:`StageFailed` with the command's own error. Nothing here imports Prefect.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fashionops.config import load_params
from fashionops.config_operations import MonitorConfig
from fashionops.orchestration.failures import PipelineError, StageFailed, error_message
from fashionops.orchestration.overrides import workspace_path
from fashionops.orchestration.reports import read_json, registry_links
from fashionops.orchestration.runner import LogFn, fashionops_command, run_command

FORM_KEYS = ("report_dir",)


def drift_defaults(params_path: str | Path) -> dict[str, Any]:
    """``monitor.report_dir`` and ``score.alias`` of ``params_path`` (config defaults when missing)."""
    path = Path(params_path)
    if path.is_file():
        p = load_params(path)
        return {"report_dir": p.monitor.report_dir, "alias": p.score.alias}
    return {"report_dir": MonitorConfig().report_dir, "alias": "champion"}


def drift_args(last: int | None, since: str, source: str, alias: str, report_dir: str) -> list[str]:
    """``fashionops drift`` with the form's window (empty/None: not given)."""
    args = fashionops_command("drift", "--alias", alias, "--report-dir", report_dir)
    if last:
        args += ["--last", str(int(last))]
    if since:
        args += ["--since", since]
    if source:
        args += ["--source", source]
    return args


def run_drift_report(
    workspace: str | Path,
    *,
    last: int | None,
    since: str,
    source: str,
    alias: str,
    report_dir: str,
    env: dict[str, str] | None = None,
    log: LogFn | None = None,
) -> dict[str, Any]:
    """``fashionops drift`` in ``workspace``; ``drift.json`` plus ``reason`` (the command's error
    line when it found drift, else None) and ``html`` (the report's absolute path)."""
    out = workspace_path(workspace, report_dir).resolve()
    started = time.time()
    code, lines = run_command(drift_args(last, since, source, alias, str(out)), cwd=workspace, env=env, log=log)
    report = out / "drift.json"
    result = read_json(report) if report.is_file() and report.stat().st_mtime >= started - 1 else None
    if code not in (0, 1) or (code == 1 and (not isinstance(result, dict) or result.get("verdict") != "drift")):
        raise StageFailed.from_output("drift", code, lines)
    if not isinstance(result, dict):
        raise PipelineError(f"fashionops drift exited 0 but wrote no report at {report}")
    result["reason"] = error_message(lines) if code == 1 else None
    result["html"] = str(out / "drift.html")
    return result


def verdict_table(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per signal: verdict, statistic, value, threshold, test, p-value (the table artifact)."""
    rows = []
    for s in result.get("signals", []):
        rows.append(
            {
                "signal": s["name"],
                "verdict": s["status"],
                "statistic": s["statistic"],
                "value": None if s["value"] is None else round(float(s["value"]), 4),
                "threshold": s["threshold"],
                "test": s["test"],
                "p_value": None if s["p_value"] is None else float(f"{s['p_value']:.3g}"),
                "n_window": s["n_window"],
            }
        )
    return rows


def drift_links(result: dict[str, Any]) -> list[dict[str, str]]:
    """Links to the HTML report (a file URL in the workspace) and the drift report's MLflow run."""
    links = [{"key": "drift-report-html", "text": "drift.html (offline report)", "link": Path(result["html"]).as_uri()}]
    for link in registry_links(None, result.get("mlflow")):
        if link["key"] == "mlflow-run":
            link["key"], link["text"] = "drift-report-run", f"MLflow drift run {result['mlflow']['run_id']}"
        links.append(link)
    return links
