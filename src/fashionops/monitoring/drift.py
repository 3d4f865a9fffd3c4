"""``fashionops drift``: a window of the observation log against the registered classifier's
training reference; ``drift.json`` + ``drift.html`` in ``monitor.report_dir``, an MLflow run in
the experiment ``<tracking.experiment>-drift``, and :class:`DriftDetected` (exit status 1, one
line naming the drifted signals) when a signal crosses its threshold, raised after all of that
is written. The signals and their statistics: :mod:`fashionops.monitoring.signals`; the
reference: :mod:`fashionops.monitoring.reference`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from fashionops import tracking
from fashionops.config import Params
from fashionops.errors import FashionOpsError
from fashionops.monitoring.reference import load_reference
from fashionops.monitoring.report import write_reports
from fashionops.monitoring.signals import Signal, all_signals
from fashionops.monitoring.store import load_window
from fashionops.run_lineage import run_name

log = logging.getLogger(__name__)

EXPERIMENT_SUFFIX = "-drift"


class DriftDetected(FashionOpsError):
    """At least one drift signal crossed its threshold; the message names them."""


def resolve_classifier(p: Params, alias: str) -> tuple[str, str]:
    """``(classifier name, version)`` of the registered pair ``alias`` (checked to be a pair)."""
    from fashionops.registry.aliases import registry_client, resolve_pair

    client = registry_client(p.tracking)
    classifier_version, _ = resolve_pair(client, p.register, alias)
    return p.register.classifier_name, classifier_version


def overall_verdict(signals: list[Signal]) -> str:
    """``drift`` when any signal drifts, ``insufficient_data`` when none could be judged, else ``ok``."""
    if any(s.status == "drift" for s in signals):
        return "drift"
    if all(s.status == "insufficient_data" for s in signals):
        return "insufficient_data"
    return "ok"


def run_drift(
    p: Params,
    last: int | None,
    since: str | None,
    source: str | None,
    alias: str | None,
    report_dir: str | None,
) -> dict[str, Any]:
    """Compare the window (``last`` N observations of ``source`` at or after ``since``) with the
    reference of ``alias``'s classifier; returns a short summary, raises DriftDetected on drift."""
    alias = alias or p.score.alias
    out_dir = Path(report_dir or p.monitor.report_dir)
    name, version = resolve_classifier(p, alias)
    window = load_window(p.monitor.store, last=last, since=since, source=source)
    reference = load_reference(p, name, version)
    others = sorted(set(window["model_version"].dropna().astype(str)) - {str(version)})
    if others:
        log.warning("the window also holds observations of %s v%s (the reference is v%s)", name, others, version)
    signals = all_signals(reference, window, p.monitor)
    verdict = overall_verdict(signals)
    drifted = [s.name for s in signals if s.status == "drift"]
    result: dict[str, Any] = {
        "verdict": verdict,
        "drifted": drifted,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "alias": alias,
        "reference": {"model": name, "version": version, "n": len(reference)},
        "window": {"last": last, "since": since, "source": source, "store": p.monitor.store},
        "window_size": len(window),
        "window_span": _span(window),
        "model_versions": sorted(set(window["model_version"].dropna().astype(str))),
        "signals": [s.as_dict() for s in signals],
    }
    with drift_run(p, result) as run:
        result["mlflow"] = {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id}
        files = write_reports(out_dir, result, reference, window)
        _log_results(result, files)
    run_id = result["mlflow"]["run_id"]
    for s in signals:
        log.info("%-20s %-17s %s", s.name, s.status, s.reason)
    summary = {
        "verdict": verdict,
        "drifted": drifted,
        "signals": {s.name: s.status for s in signals},
        "window_size": len(window),
        "reference": f"{name} v{version}",
        "report": str(files["html"]),
        "json": str(files["json"]),
        "mlflow_run_id": run_id,
        "mlflow_experiment_id": result["mlflow"]["experiment_id"],
    }
    if verdict == "drift":
        reasons = "; ".join(f"{s.name} ({s.reason})" for s in signals if s.status == "drift")
        raise DriftDetected(f"drift detected in {', '.join(drifted)}: {reasons}; report {files['html']}")
    return summary


def _span(window: pd.DataFrame) -> dict[str, str | None]:
    if window.empty:
        return {"first": None, "last": None}
    return {"first": str(window["ts"].iloc[0]), "last": str(window["ts"].iloc[-1])}


@contextmanager
def drift_run(p: Params, result: dict[str, Any]) -> Iterator[Any]:
    """The drift report's MLflow run in ``<tracking.experiment>-drift`` (its own experiment: the
    training experiment keeps only candidates), active for the ``with`` block."""
    import mlflow

    experiment = p.tracking.experiment + EXPERIMENT_SUFFIX
    experiment_id = tracking.configure(p.tracking.model_copy(update={"experiment": experiment}))
    ref = result["reference"]
    tags = {
        **tracking.run_tags(p.paths),
        **tracking.owner_tags(),
        "fashionops.kind": "drift",
        "fashionops.alias": str(result["alias"]),
        "fashionops.classifier_name": ref["model"],
        "fashionops.classifier_version": str(ref["version"]),
        "fashionops.drift_verdict": result["verdict"],
        "fashionops.drifted": ",".join(result["drifted"]),
    }
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name("drift"), tags=tags) as run:
        tracking.log_params_flat({f"window.{k}": v for k, v in result["window"].items()})
        yield run


def _log_results(result: dict[str, Any], files: dict[str, Path]) -> None:
    """Per-signal metrics (``<signal>/value``, ``/p_value``, ``/drift``) and both reports."""
    import mlflow

    metrics: dict[str, float] = {
        "window_size": float(result["window_size"]),
        "reference_size": float(result["reference"]["n"]),
    }
    for s in result["signals"]:
        metrics[f"{s['name']}/drift"] = float(s["status"] == "drift")
        for key in ("value", "p_value"):
            if s[key] is not None:
                metrics[f"{s['name']}/{key}"] = float(s[key])
    mlflow.log_metrics(metrics)
    mlflow.log_artifact(str(files["json"]), "drift")
    mlflow.log_artifact(str(files["html"]), "drift")
