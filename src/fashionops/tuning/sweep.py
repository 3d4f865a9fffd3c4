"""``fashionops sweep``: an Optuna study over ``sweep.space`` whose trials are the project's own
training (``run_train``) on the workspace's prepared data.

Each trial gets ``params.yaml`` (+ ``--set`` overrides) with its values applied like
``--set section.key=value``, trains into a scratch directory (never the workspace's ``models/`` or
``reports/``; removed when the trial ends) and is an MLflow run nested under the sweep's parent
run. TPE sampler seeded by ``sweep.seed``; median pruning on the validation macro-F1 of each epoch
(``sweep.pruner_startup_trials`` trials and ``sweep.pruner_warmup_epochs`` epochs never pruned);
``--timeout`` stops starting new trials. A trial whose params are refused (``FashionOpsError``) is
recorded as failed and the sweep goes on; Ctrl-C / SIGTERM end the sweep (parent run KILLED)
keeping the best trial so far. The best trial's values become the DVC experiment
``sweep-<parent run id>`` (:mod:`~fashionops.tuning.experiment`). The workspace's pipeline lock is
held for the whole sweep: a pipeline run would rewrite the prepared data the trials read.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna

from fashionops.config import Params, load_params
from fashionops.errors import ConfigError, FashionOpsError
from fashionops.tuning.experiment import experiment_workspace, save_params_experiment
from fashionops.tuning.pruning import MedianPruning, NestedRun
from fashionops.tuning.space import check_space, space_overrides, suggest
from fashionops.tuning.stopping import StopOnSignal, StopRequest, stop_signals
from fashionops.tuning.trials import METRICS_ATTR, RUN_ID_ATTR, ParentRun, best_trial, trial_rows

log = logging.getLogger(__name__)
LOCK_TIMEOUT_S = 3600.0  # how long a sweep waits for a pipeline run in the same workspace


class Objective:
    """One trial: suggest, train with the trial's values in its scratch dir, return the best
    epoch's validation macro-F1 (``optuna.TrialPruned`` when the pruner stopped it)."""

    def __init__(
        self, parent: ParentRun, params_path: str, overrides: list[str], p: Params, scratch: Path, stop: StopRequest
    ) -> None:
        self.parent, self.params_path, self.overrides, self.p, self.scratch = parent, params_path, overrides, p, scratch
        self.stop = stop

    def __call__(self, trial: optuna.Trial) -> float:
        from fashionops.training.stage import run_train

        self.stop.check()  # a signal swallowed since the last trial ended
        values = suggest(trial, self.p.sweep.space)
        name = f"{self.parent.name}-trial-{trial.number}"
        out = self.scratch / f"trial-{trial.number}"
        paths = [f"paths.classifier_dir={out / 'classifier'}", f"paths.reports_dir={out / 'reports'}"]
        tags = {"sweep.trial": str(trial.number), "stage": "sweep-trial"}
        nested, pruning = NestedRun(self.parent.run_id, name, tags), MedianPruning(trial)
        log.info("trial %d: %s", trial.number, ", ".join(f"{k}={v}" for k, v in values.items()))
        try:
            tp = load_params(self.params_path, [*self.overrides, *space_overrides(values), *paths])
            metrics = run_train(
                tp.train,
                tp.paths,
                tp.tracking,
                balance=tp.prepare.balance,
                run_config=tp.flat(),
                callbacks=[nested, pruning, StopOnSignal(self.stop)],
            )
        except FashionOpsError as exc:
            message = str(exc).replace("\n", " ")
            if nested.run_id is None:
                run_id = self.parent.failed_trial_run(name, values, message)
            else:
                run_id = nested.run_id
                self.parent.tag_trial(run_id, "FAIL", {"sweep.error": message})
            trial.set_user_attr(RUN_ID_ATTR, run_id)
            log.warning("trial %d failed: %s", trial.number, message)
            raise
        finally:
            shutil.rmtree(out, ignore_errors=True)
        assert nested.run_id is not None  # the train stage opened the trial's run
        trial.set_user_attr(RUN_ID_ATTR, nested.run_id)
        from fashionops.training.stage import headline_metrics

        trial.set_user_attr(METRICS_ATTR, headline_metrics(metrics))
        if pruning.pruned_at is not None:
            self.parent.tag_trial(nested.run_id, "PRUNED", {"sweep.pruned_at_epoch": str(pruning.pruned_at)})
            raise optuna.TrialPruned(f"pruned after epoch {pruning.pruned_at}")
        value = metrics.get("best_val_macro_f1")
        if value is None:
            self.parent.tag_trial(nested.run_id, "FAIL", {"sweep.error": "no validation macro-F1"})
            raise FashionOpsError(f"trial {trial.number}: training reported no validation macro-F1")
        self.parent.tag_trial(nested.run_id, "COMPLETE")
        log.info("trial %d: val macro-F1 %.4f", trial.number, value)
        return float(value)


@contextlib.contextmanager
def _workspace_held(workspace: Path, dvc_problem: str | None) -> Iterator[None]:
    """The workspace's pipeline lock (DVC workspaces only: the lock lives in ``.dvc/tmp``)."""
    if dvc_problem is not None:
        yield
        return
    from fashionops.orchestration.lock import workspace_lock

    with workspace_lock(workspace, timeout_s=LOCK_TIMEOUT_S, owner=f"fashionops sweep ({workspace})"):
        yield


def run_sweep(
    p: Params, trials: int | None, timeout_s: float | None, params_path: str, overrides: list[str]
) -> dict[str, Any]:
    """Run the sweep (see the module docstring); returns its summary: parent run, trial counts,
    the best trial (value, params, MLflow run) and the DVC experiment holding its params."""
    cfg = p.sweep
    n_trials = trials or cfg.trials
    timeout = timeout_s if timeout_s is not None else cfg.timeout_s
    if p.train.task != "classifier":
        raise ConfigError("sweep: train.task must be classifier (trials are pruned on the validation macro-F1)")
    check_space(cfg, params_path, overrides)  # before anything is trained or logged
    workspace = Path(params_path).resolve().parent
    dvc_problem = experiment_workspace(workspace)
    if dvc_problem:
        log.warning("sweep: %s: the best params will not be saved as a DVC experiment", dvc_problem)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # this module logs each trial itself

    with _workspace_held(workspace, dvc_problem):
        parent = ParentRun(p, n_trials, timeout, overrides)
        log.info(
            "sweep %s: %d trials%s, MLflow run %s",
            parent.name,
            n_trials,
            f", {timeout:g} s" if timeout else "",
            parent.run_id,
        )
        study = optuna.create_study(
            study_name=parent.name,
            direction="maximize",
            sampler=optuna.samplers.TPESampler(seed=cfg.seed),
            pruner=optuna.pruners.MedianPruner(
                n_startup_trials=cfg.pruner_startup_trials, n_warmup_steps=cfg.pruner_warmup_epochs
            ),
        )
        scratch = Path(tempfile.mkdtemp(prefix="fashionops-sweep-"))
        status, experiment = "FAILED", None
        try:
            with stop_signals() as stop:
                study.optimize(
                    Objective(parent, params_path, overrides, p, scratch, stop),
                    n_trials=n_trials,
                    timeout=timeout,
                    catch=(FashionOpsError,),
                    callbacks=[stop.check],  # after the garbage collection that may swallow a signal
                    gc_after_trial=True,
                )
            status = "FINISHED"
        except BaseException as exc:  # Ctrl-C, SIGTERM (errors.Terminated), Lightning's SystemExit: stopped
            status = "FAILED" if isinstance(exc, Exception) else "KILLED"
            if status == "KILLED":
                log.warning("sweep %s stopped (%s): keeping the best trial so far", parent.name, type(exc).__name__)
            raise
        finally:
            experiment = _save_best(study, parent, workspace, params_path, dvc_problem)
            parent.finish(study, scratch, status)
            shutil.rmtree(scratch, ignore_errors=True)
    return summary(study, parent, experiment)


def _save_best(
    study: optuna.Study, parent: ParentRun, workspace: Path, params_path: str, dvc_problem: str | None
) -> str | None:
    """Write the best trial's values as the DVC experiment ``sweep-<parent run id>``; its name."""
    best = best_trial(study)
    if best is None or dvc_problem is not None:
        if best is None:
            log.warning("sweep %s: no trial completed: no DVC experiment", parent.name)
        return None
    name = f"sweep-{parent.run_id[:8]}"
    message = (
        f"fashionops sweep {parent.name} (MLflow run {parent.run_id}): "
        f"trial {best.number}, val macro-F1 {best.value:.4f}"
    )
    try:
        save_params_experiment(workspace, params_path, dict(best.params), name, message)
    except FashionOpsError as exc:
        log.error("sweep %s: the DVC experiment was not written: %s", parent.name, exc)
        return None
    parent.client.set_tag(parent.run_id, "dvc_experiment", name)
    return name


def summary(study: optuna.Study, parent: ParentRun, experiment: str | None) -> dict[str, Any]:
    """What ``fashionops sweep`` prints: parent run, counts per state, the best trial, the experiment."""
    rows = trial_rows(study)
    states = [r["state"] for r in rows]
    best = best_trial(study)
    return {
        "mlflow_run_id": parent.run_id,
        "run_name": parent.name,
        "experiment_id": parent.experiment_id,
        "tracking_uri": parent.tracking_uri,
        "trials": len(rows),
        "complete": states.count("COMPLETE"),
        "pruned": states.count("PRUNED"),
        "failed": states.count("FAIL"),
        "best": None
        if best is None
        else {
            "trial": best.number,
            "val_macro_f1": best.value,
            "params": dict(best.params),
            "mlflow_run_id": best.user_attrs.get(RUN_ID_ATTR),
        },
        "dvc_experiment": experiment,
        "apply": f"dvc exp apply {experiment}" if experiment else None,
    }
