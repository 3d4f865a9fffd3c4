"""The ``params.yaml`` sections of what happens after deployment: ``score`` (batch scoring of a
catalogue drop), ``monitor`` (what the models saw, and ``fashionops drift``) and ``sweep``
(Optuna hyperparameter sweeps). No ``dvc.yaml`` stage reads them; :class:`fashionops.config.Params`
holds them beside the stage sections."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from fashionops.config_base import Section


class ScoreConfig(Section):
    """``fashionops score``: a registered classifier + index pair scores a new catalogue drop."""

    alias: str = "champion"  # the registry alias of the pair (--alias overrides)
    top_k: int = Field(default=5, ge=1)  # most probable labels (with probabilities) per image
    neighbours: int = Field(default=5, ge=1)  # nearest catalogue items per image
    batch_size: int = Field(default=64, ge=1)
    record: bool = True  # append what the model saw to the monitoring log (monitor.store)
    jit: bool = True  # TorchScript traces in channels_last (about 2x on CPU; checked against eager)


class MonitorConfig(Section):
    """What the models saw (batch scoring; the server when ``record_requests``) and ``fashionops drift``."""

    store: str = "monitoring/observations.sqlite"  # append-only log (SQLite, safe under concurrent writers)
    record_requests: bool = False  # serve: record each classify/search request (opt-in)
    projection_dim: int = Field(default=16, ge=2)  # compact embedding projection kept per observation
    report_dir: str = "reports/drift"  # drift.html + drift.json
    cron: str | None = None  # schedule of the drift-report deployment, e.g. "0 6 * * *"
    # the training reference: held-out prepared images (raw files) scored by the pair's classifier
    reference_dir: str = "monitoring/reference"  # cache, one Parquet file per classifier version
    reference_size: int = Field(default=1000, ge=10)  # images, stratified by label
    reference_splits: list[Literal["train", "val", "test"]] = ["val", "test"]
    # drift thresholds: a signal drifts when its test is significant (p < alpha) AND its effect
    # size crosses its threshold (a large window never alarms on a negligible difference)
    min_window: int = Field(default=50, ge=2)  # fewer observations: "insufficient data", no verdict
    alpha: float = Field(default=0.01, gt=0, lt=1)  # significance level (Bonferroni-split over facts)
    class_js_max: float = Field(default=0.2, gt=0, le=1)  # Jensen-Shannon distance of predicted classes
    confidence_drop_max: float = Field(default=0.1, gt=0, le=1)  # mean confidence drop
    embedding_auc_max: float = Field(default=0.75, gt=0.5, le=1)  # domain classifier ROC AUC
    fact_ks_max: float = Field(default=0.3, gt=0, le=1)  # KS statistic D of an image fact


class SweepParam(Section):
    """One dimension of the search space: ``float``/``int`` between ``low`` and ``high`` (``log``
    scale optional) or ``categorical`` over ``choices``."""

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list[str | int | float | bool | None] = []

    @model_validator(mode="after")
    def _bounds(self) -> SweepParam:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("categorical needs choices")
        elif self.low is None or self.high is None or self.low >= self.high:
            raise ValueError(f"{self.type} needs low < high")
        elif self.log and self.low <= 0:
            raise ValueError("log scale needs low > 0")
        return self


class SweepConfig(Section):
    """``fashionops sweep``: Optuna TPE over ``space`` (``section.key`` -> range), median pruning on
    the validation macro-F1 of each epoch; each trial a nested MLflow run under one parent."""

    trials: int = Field(default=20, ge=1)
    timeout_s: float | None = Field(default=None, gt=0)  # stop starting trials after this
    seed: int = 42
    pruner_startup_trials: int = Field(default=2, ge=0)  # trials that are never pruned
    pruner_warmup_epochs: int = Field(default=1, ge=0)  # epochs of each trial that are never pruned
    space: dict[str, SweepParam] = {}
