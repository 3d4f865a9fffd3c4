"""The Lightning callbacks a sweep adds to a trial's training (``run_train(callbacks=...)``).

* :class:`MedianPruning` reports the validation macro-F1 of every epoch to the Optuna trial and,
  when the study's pruner says so, stops training cleanly at the end of that epoch (the best
  epoch so far is still saved and logged); the sweep then marks the trial PRUNED.
* :class:`NestedRun` makes the trial's MLflow run (opened by the train stage) a child of the
  sweep's parent run and names it for the trial.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import lightning as L
import optuna
from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)
MONITOR = "val_macro_f1"  # the train stage's validation macro-F1 of an epoch (lit_module)
PARENT_TAG = "mlflow.parentRunId"  # how MLflow nests a run under another
STATE_TAG = "sweep.state"  # the trial's Optuna state: COMPLETE, PRUNED, FAIL


class MedianPruning(Callback):
    """Report ``val_macro_f1`` after each validation (step = epoch index, 0-based) and stop the
    trial's training when ``trial.should_prune()``; ``pruned_at`` is then that epoch (1-based)."""

    def __init__(self, trial: optuna.Trial, monitor: str = MONITOR) -> None:
        self.trial = trial
        self.monitor = monitor
        self.pruned_at: int | None = None
        self.reported: dict[int, float] = {}

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            return
        score, step = float(value), int(trainer.current_epoch)
        if not math.isfinite(score):
            return
        self.trial.report(score, step)
        self.reported[step] = score
        if self.trial.should_prune():
            self.pruned_at = step + 1
            trainer.should_stop = True  # ends after this epoch: checkpoints and the run close normally
            log.info("trial %d pruned after epoch %d (val macro-F1 %.4f)", self.trial.number, step + 1, score)


class NestedRun(Callback):
    """Nest the trial's MLflow run under ``parent_run_id``, name it ``name`` and tag it with the
    trial's number and values; ``run_id`` is the trial's run once training has started."""

    def __init__(self, parent_run_id: str, name: str, tags: dict[str, str] | None = None) -> None:
        self.parent_run_id = parent_run_id
        self.name = name
        self.tags = tags or {}
        self.run_id: str | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from mlflow.entities import RunTag

        logger: Any = trainer.logger
        if logger is None or getattr(logger, "run_id", None) is None:
            return
        self.run_id = str(logger.run_id)
        client = logger.experiment
        client.update_run(self.run_id, name=self.name)
        tags = {PARENT_TAG: self.parent_run_id, **self.tags}
        client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
