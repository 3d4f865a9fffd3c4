"""The sweep's MLflow records: the parent run (its params: the space and the budget), a run for a
trial that failed before training opened one, the trial table and the optimisation history
(``sweep/trials.csv`` + ``sweep/history.png`` on the parent), the best trial's results."""

from __future__ import annotations

import csv
import logging
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from fashionops.config import Params
from fashionops.tracking import configure, owner_tags, param_text, run_tags, tracking_uri
from fashionops.tuning.pruning import PARENT_TAG, STATE_TAG
from fashionops.tuning.space import describe

log = logging.getLogger(__name__)
RUN_ID_ATTR = "mlflow_run_id"  # trial user attribute: the trial's nested MLflow run
METRICS_ATTR = "metrics"  # trial user attribute: the train stage's headline metrics


class ParentRun:
    """The sweep's MLflow run, every trial's run nested under it."""

    def __init__(self, p: Params, trials: int, timeout_s: float | None, overrides: list[str]) -> None:
        self.experiment_id = configure(p.tracking)
        self.tracking_uri = tracking_uri(p.tracking)
        self.client = MlflowClient(self.tracking_uri)
        self.name = "sweep-" + datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        tags = {**run_tags(p.paths), **owner_tags(), "stage": "sweep"}
        run = self.client.create_run(self.experiment_id, run_name=self.name, tags=tags)
        self.run_id: str = run.info.run_id
        cfg = p.sweep
        params = {
            "sweep.trials": trials,
            "sweep.timeout_s": timeout_s,
            "sweep.seed": cfg.seed,
            "sweep.sampler": "TPE",
            "sweep.pruner": "median",
            "sweep.pruner_startup_trials": cfg.pruner_startup_trials,
            "sweep.pruner_warmup_epochs": cfg.pruner_warmup_epochs,
            "sweep.overrides": " ".join(overrides),
            **{f"sweep.space.{key}": describe(spec) for key, spec in cfg.space.items()},
        }
        self.client.log_batch(self.run_id, params=[Param(k, param_text(v)) for k, v in params.items()])

    def failed_trial_run(self, name: str, values: dict[str, Any], error: str) -> str:
        """A FAILED nested run for a trial whose params were refused before training began."""
        tags = {PARENT_TAG: self.run_id, STATE_TAG: "FAIL", "sweep.error": error[:5000]}
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        params = [Param(k, param_text(v)) for k, v in values.items()]
        self.client.log_batch(run.info.run_id, params=params)
        self.client.set_terminated(run.info.run_id, "FAILED")
        return str(run.info.run_id)

    def tag_trial(self, run_id: str, state: str, extra: dict[str, str] | None = None) -> None:
        tags = {STATE_TAG: state, **(extra or {})}
        self.client.log_batch(run_id, tags=[RunTag(k, v[:5000]) for k, v in tags.items()])

    def finish(self, study: optuna.Study, out_dir: Path, status: str) -> None:
        """Log the trial table, the history plot and the best trial; end the run with ``status``."""
        table = write_trials_csv(study, out_dir / "trials.csv")
        self.client.log_artifact(self.run_id, str(table), artifact_path="sweep")
        plot = plot_history(study, out_dir / "history.png")
        if plot is not None:
            self.client.log_artifact(self.run_id, str(plot), artifact_path="sweep")
        states = [t.state.name for t in study.trials]
        counts = {f"sweep/trials_{s.lower()}": float(states.count(s)) for s in ("COMPLETE", "PRUNED", "FAIL")}
        metrics = dict(counts)
        best = best_trial(study)
        if best is not None:
            assert best.value is not None
            metrics["sweep/best_val_macro_f1"] = float(best.value)
            for key, value in (best.user_attrs.get(METRICS_ATTR) or {}).items():
                metrics[f"best/{key}"] = float(value)
            tags = {f"best.{k}": param_text(v) for k, v in best.params.items()}
            tags["best.trial"] = str(best.number)
            tags["best.mlflow_run_id"] = str(best.user_attrs.get(RUN_ID_ATTR, ""))
            self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        stamp = int(datetime.now(timezone.utc).timestamp() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, stamp, 0) for k, v in metrics.items()])
        self.client.set_terminated(self.run_id, status)


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The completed trial with the highest value (None when no trial completed)."""
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None]
    return max(done, key=lambda t: (float(t.value or 0.0), -t.number)) if done else None


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One row per trial: number, state, value, best so far, seconds, epochs, MLflow run, values."""
    rows, best = [], -math.inf
    for t in study.trials:
        if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None:
            best = max(best, float(t.value))
        seconds = (
            (t.datetime_complete - t.datetime_start).total_seconds()
            if t.datetime_complete and t.datetime_start
            else None
        )
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name,
                "value": t.value,
                "best_so_far": best if math.isfinite(best) else None,
                "seconds": round(seconds, 2) if seconds is not None else None,
                "epochs_reported": len(t.intermediate_values),
                RUN_ID_ATTR: t.user_attrs.get(RUN_ID_ATTR),
                **t.params,
            }
        )
    return rows


def write_trials_csv(study: optuna.Study, path: Path) -> Path:
    rows = trial_rows(study)
    columns = list(dict.fromkeys(k for row in rows for k in row)) or ["trial", "state", "value"]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: ("" if row.get(k) is None else row.get(k)) for k in columns} for row in rows)
    return path


def plot_history(study: optuna.Study, path: Path) -> Path | None:
    """Each trial's value and the best so far (pruned trials at their last reported epoch)."""
    rows = trial_rows(study)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for state, marker in (("COMPLETE", "o"), ("PRUNED", "x")):
        pts = [
            (r["trial"], y) for r in rows if r["state"] == state and (y := _last_value(study, r["trial"])) is not None
        ]
        if pts:
            ax.scatter([x for x, _ in pts], [y for _, y in pts], marker=marker, label=state.lower())
    best = [(r["trial"], r["best_so_far"]) for r in rows if r["best_so_far"] is not None]
    if best:
        ax.step([x for x, _ in best], [y for _, y in best], where="post", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("validation macro-F1")
    if ax.get_legend_handles_labels()[0]:  # nothing to label when every trial failed
        ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _last_value(study: optuna.Study, number: int) -> float | None:
    t = study.trials[number]
    if t.value is not None:
        return float(t.value)
    return float(t.intermediate_values[max(t.intermediate_values)]) if t.intermediate_values else None
