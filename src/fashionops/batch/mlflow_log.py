"""One MLflow run per batch scoring, in the experiment ``<tracking.experiment>-batch-scoring``.

Scoring runs live in an experiment of their own so that the training experiment keeps only
candidates (its run comparisons, the registry's links and ``mark_abandoned_runs`` stay about
training). A run holds:

* params: the drop, the output file, the alias, both registered versions, ``score.*``;
* metrics: ``n_images``, ``n_scored``, ``n_failed``, ``mean_confidence``, ``seconds``,
  ``images_per_s`` (and ``n_recorded`` when recording for drift monitoring);
* artifacts: ``summary.json``, ``bad_images.csv`` (id, file, reason), ``label_distribution.csv``
  (every predicted label and its count) and the Parquet file itself when it is at most
  :data:`PARQUET_ARTIFACT_MAX_BYTES` (a large drop's file stays where ``--out`` put it);
* tags: the registered pair (``fashionops.classifier_version``, ...), the alias, the
  reproducibility tags of every run (:func:`fashionops.tracking.run_tags`) and its owner process.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from fashionops import tracking
from fashionops.config import Params
from fashionops.run_lineage import run_name

EXPERIMENT_SUFFIX = "-batch-scoring"
PARQUET_ARTIFACT_MAX_BYTES = 20 * 1024 * 1024  # a bigger scores file is not copied into MLflow


def experiment_name(p: Params) -> str:
    """The MLflow experiment scoring runs go to."""
    return p.tracking.experiment + EXPERIMENT_SUFFIX


def pair_tags(pair: dict[str, Any]) -> dict[str, str]:
    """Tags naming the registered pair a run scored with."""
    tags = {"fashionops.kind": "batch-scoring", "fashionops.alias": str(pair.get("alias") or "")}
    for role in ("classifier", "index"):
        for key in ("name", "version", "run_id"):
            value = pair[role].get(key)
            if value is not None:
                tags[f"fashionops.{role}_{key}"] = str(value)
    return tags


@contextmanager
def scoring_run(p: Params, pair: dict[str, Any], params: dict[str, Any]) -> Iterator[Any]:
    """The scoring's MLflow run, active for the ``with`` block (FAILED if the block raises)."""
    import mlflow

    experiment_id = tracking.configure(p.tracking.model_copy(update={"experiment": experiment_name(p)}))
    tags = {**tracking.run_tags(p.paths), **tracking.owner_tags(), **pair_tags(pair)}
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name("score"), tags=tags) as run:
        tracking.log_params_flat(params)
        yield run


def log_results(
    summary: dict[str, Any],
    bad: pd.DataFrame,
    labels: list[tuple[str, int]],
    out: Path,
    recorded: int | None,
) -> None:
    """Metrics and artifacts of the active scoring run (see the module docstring)."""
    import mlflow

    metrics = {
        "n_images": summary["images"],
        "n_scored": summary["scored"],
        "n_failed": summary["failed"],
        "seconds": summary["seconds"],
    }
    for key in ("mean_confidence", "images_per_s"):
        if summary.get(key) is not None:
            metrics[key] = summary[key]
    if recorded is not None:
        metrics["n_recorded"] = recorded
    mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
    with tempfile.TemporaryDirectory(prefix="fashionops-score-") as tmp:
        folder = Path(tmp)
        (folder / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        bad.to_csv(folder / "bad_images.csv", index=False)
        pd.DataFrame(labels, columns=["label", "count"]).to_csv(folder / "label_distribution.csv", index=False)
        mlflow.log_artifacts(str(folder), "scoring")
    if out.stat().st_size <= PARQUET_ARTIFACT_MAX_BYTES:
        mlflow.log_artifact(str(out), "scoring")
