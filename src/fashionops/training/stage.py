"""``train`` stage: Lightning training of the ``model_spec`` network on ``data/prepared``.

``run_train(cfg, paths, tracking, balance=..., resume=...)`` reads ``paths.prepared_dir`` and
writes (see ``docs/architecture.md``):

* ``<paths.classifier_dir>/{weights.pt, model_spec.json}`` (the best epoch) and
  ``checkpoints/{best,last}.ckpt``;
* ``<paths.reports_dir>/train/metrics.json`` (the DVC metrics file, logged to MLflow under the same
  names: :data:`HEADLINE`, ``train/best_val_macro_f1``, ``train/seconds``, ...), ``summary.json``
  (the same and the device, precision, model, sizes, run id), ``history.csv`` (one row per epoch,
  also MLflow's per-epoch curves) and ``mlflow_run.json`` (``paths.run_file``: the
  MLflow run the later stages reopen, written when training has finished: until then it names
  the previous run, which matches the previous model).

Placement is automatic: on a CUDA GPU bf16-mixed precision and channels_last memory format, on
CPU fp32 with torch using every core it may. ``resume=True`` continues from
``checkpoints/last.ckpt`` (Lightning's ``ckpt_path``) into the MLflow run recorded in it (and
beside it, ``checkpoints/mlflow_run.json``); a run stopped by SIGTERM ends KILLED, and runs left
RUNNING by a killed process are marked KILLED when the next training starts. Every epoch's
randomness (sample order, augmentation, dropout) is a function of ``train.seed`` and the epoch
number only, so a resumed run retraces an uninterrupted one.

``train.strategy: ddp`` with ``devices``/``num_nodes`` trains in several processes
(``training.distributed``): the other local ranks re-run the same ``fashionops train`` command,
each trains on its shard, validation metrics are gathered over all ranks, and only rank 0 writes
files and talks to MLflow (the logger exists on rank 0 only). A failed rank ends the run.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, EMAWeightAveraging, ModelCheckpoint

from fashionops.config import PathsConfig, TrackingConfig, TrainConfig, flatten
from fashionops.errors import FashionOpsError
from fashionops.models.spec import ModelSpec
from fashionops.models.torch_files import load_weights_only
from fashionops.tracking import mark_abandoned_runs, write_run_file
from fashionops.training.callbacks import EpochSeed, ProgressiveResize, RunCheckpoint, Throughput, ThroughputBar
from fashionops.training.datamodule import FashionDataModule, PreparedData, load_prepared
from fashionops.training.distributed import StageLauncher, join_as_started_rank, resolve_strategy
from fashionops.training.lit_module import FashionLitModule
from fashionops.training.mlflow_run import make_logger, resumable_run_id, run_record, start_tracking
from fashionops.training.runtime import resolve_runtime, set_cpu_threads

log = logging.getLogger(__name__)
CHECKPOINT_DIR = "checkpoints"
HISTORY_COLUMNS = [
    "epoch",
    "train_loss",
    "val_loss",
    "val_acc",
    "val_macro_f1",
    "lr",
    "train_acc",
    "train_macro_f1",
    "epoch_seconds",
    "images_per_s",
]

# Expected on this stage's setup; each would otherwise print on every run.
for _pattern in (
    r".*does not have many workers.*",
    r".*The number of training batches .* is smaller than the logging interval.*",
    r".*Experiment with name .* not found.*",
    r".*`isinstance\(treespec, LeafSpec\)` is deprecated.*",
    # under DDP: the epoch metrics are gathered over the ranks before they are logged (lit_module)
    r".*It is recommended to use `self.log\(.*sync_dist=True.*",
):
    warnings.filterwarnings("ignore", message=_pattern)


# -- reports ------------------------------------------------------------------------------
# metrics.json name -> summary.json key: the best epoch's validation scores, how long it trained
# and how fast (a reviewer's regression flags); device, model and sizes stay in summary.json.
HEADLINE = {
    "train/best_val_macro_f1": "best_val_macro_f1",
    "train/best_val_accuracy": "best_val_acc",
    "train/best_val_loss": "best_val_loss",
    "train/best_epoch": "best_epoch",
    "train/epochs": "epochs_run",
    "train/seconds": "seconds",
    "train/images_per_s": "images_per_s",
}


def headline_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """The ``metrics.json`` content: :data:`HEADLINE` names of the summary's measured values
    (counts stay integers)."""
    return {
        name: value if isinstance(value, int) else float(value)
        for name, key in HEADLINE.items()
        if (value := summary.get(key)) is not None and not isinstance(value, bool)
    }


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def build_history(module_history: list[dict[str, float]], throughput: list[dict[str, float]]) -> list[dict[str, Any]]:
    """One row per epoch: the module's metrics joined with the throughput callback's timings
    (a multi-attribute model's per-head columns, ``val_<attribute>_acc`` ..., after the usual ones)."""
    timing = {int(t["epoch"]): t for t in throughput}
    rows = []
    for row in module_history:
        t = timing.get(int(row["epoch"]), {})
        merged = {c: row.get(c, t.get(c)) for c in HISTORY_COLUMNS}
        merged.update({c: v for c, v in row.items() if c not in merged})
        rows.append(merged)
    return rows


def write_history(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = list(dict.fromkeys(c for row in rows for c in row if c not in HISTORY_COLUMNS))
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=HISTORY_COLUMNS + extra)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})


def best_row(rows: list[dict[str, Any]], monitor: str, mode: str) -> dict[str, Any] | None:
    """The epoch ModelCheckpoint keeps: best ``monitor``, the earliest one on ties."""
    scored = [r for r in rows if r.get(monitor) is not None and math.isfinite(r[monitor])]
    if not scored:
        return None
    sign = -1.0 if mode == "max" else 1.0
    return min(scored, key=lambda r: (sign * r[monitor], r["epoch"]))


# -- the stage ----------------------------------------------------------------------------
def build_trainer(
    cfg: TrainConfig,
    runtime: dict[str, Any],
    ckpt_dir: Path,
    monitor: tuple[str, str],
    logger: Any,
    throughput: Throughput,
    extra_callbacks: list[Callback] | None = None,
) -> L.Trainer:
    """The Trainer of the stage: checkpoints on the monitor, early stopping, seeded epochs.

    ``logger``: the MLflow logger (rank 0 only; see :func:`attach_logger` for adding it later).
    """
    name, mode = monitor
    checkpoint = RunCheckpoint(
        dirpath=ckpt_dir,
        filename="best",
        monitor=name,
        mode=mode,
        save_top_k=1,
        save_last=True,
        enable_version_counter=False,
        auto_insert_metric_name=False,
    )
    callbacks: list[Callback] = [
        EpochSeed(cfg.seed),
        throughput,
        EarlyStopping(monitor=name, mode=mode, patience=cfg.early_stopping_patience, check_finite=True),
        ThroughputBar(throughput, refresh_rate=10 if runtime["cuda"] else 1),
        checkpoint,
        *(extra_callbacks or []),
    ]
    if cfg.ema_decay > 0:
        # swaps the average in for validation and checkpoints (so best.ckpt holds the average)
        callbacks.append(EMAWeightAveraging(decay=cfg.ema_decay))
    if cfg.early_epoch_sizes:
        callbacks.append(ProgressiveResize(cfg.early_epoch_sizes))
    limit = cfg.limit_batches
    trainer = L.Trainer(
        accelerator=runtime["accelerator"],
        devices=cfg.devices,
        strategy=resolve_strategy(cfg.strategy),
        num_nodes=cfg.num_nodes,
        # the data module shards per rank itself (seeded class-weighted draws, unpadded evaluation)
        use_distributed_sampler=False,
        precision=runtime["precision"],
        max_epochs=cfg.epochs,
        callbacks=callbacks,
        logger=logger if logger is not None else False,
        limit_train_batches=limit,
        limit_val_batches=limit,
        limit_test_batches=limit,
        num_sanity_val_steps=0,  # the first real validation comes soon enough
        log_every_n_steps=50,
        benchmark=runtime["cuda"],  # fixed input size: let cuDNN pick the fastest kernels
        default_root_dir=str(ckpt_dir.parent),
        enable_model_summary=False,
    )
    if logger is not None:
        attach_logger(trainer, logger)
    return trainer


def attach_logger(trainer: L.Trainer, logger: Any) -> None:
    """Log to ``logger`` (before ``fit``): the epoch metrics, the learning rate among them (one
    ``train/lr`` value per epoch like every other curve; no LearningRateMonitor repeating it)."""
    trainer.loggers = [logger]


# train params that may change between a run and its resume (placement, paths, patience)
RESUME_MAY_CHANGE = {
    "accelerator",
    "devices",
    "strategy",
    "num_nodes",
    "num_workers",
    "cpu_threads",
    "compile",
    "precision",
    "preset",
    "early_stopping_patience",
}


def check_resumable(last: Path, cfg: TrainConfig) -> None:
    """Refuse a resume whose train params would change the run (schedule length, model, data...)."""
    try:  # weights_only: a crafted last.ckpt is refused before any of its code could run
        ckpt = load_weights_only(last, "--resume")
    except FashionOpsError as exc:
        raise FashionOpsError(f"{exc}; train again without --resume") from exc.__cause__
    saved = (ckpt.get("fashionops") or {}).get("train") if isinstance(ckpt, dict) else None
    if saved is None:
        raise FashionOpsError(f"--resume: {last} was not written by `fashionops train`")
    now = cfg.model_dump()
    # a key the checkpoint lacks came after it: that run had the key's default behaviour
    before = {**TrainConfig().model_dump(), **saved}
    changed = sorted(k for k in now if k not in RESUME_MAY_CHANGE and before.get(k) != now[k])
    if changed:
        detail = ", ".join(f"train.{k}: {before.get(k)!r} -> {now[k]!r}" for k in changed)
        raise FashionOpsError(
            f"--resume: the checkpoint was trained with other params ({detail}); "
            "resume with the same params or train again without --resume"
        )


def _best_state(ckpt_path: Path) -> dict[str, torch.Tensor]:
    ckpt = load_weights_only(ckpt_path, "train: best checkpoint")
    prefix = "model."
    return {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}


def fit(trainer: L.Trainer, lit: FashionLitModule, dm: FashionDataModule, ckpt_path: Path | None) -> None:
    """``trainer.fit``; under DDP a rank that failed first becomes the stage's one-line error."""
    try:
        # weights_only: Lightning's own load of last.ckpt must not unpickle code either
        trainer.fit(lit, datamodule=dm, ckpt_path=str(ckpt_path) if ckpt_path else None, weights_only=True)
    except Exception as exc:
        failure = getattr(trainer.strategy, "rank_failure", None)
        if failure:  # rank 0's collective broke because another rank had died: name that one
            raise FashionOpsError(
                f"train: {failure} (its error, if any, is above); all ranks were stopped and the MLflow "
                "run is marked FAILED"
            ) from exc
        raise
    launcher = trainer.strategy.launcher
    if isinstance(launcher, StageLauncher):
        launcher.finished()


def build_network(
    cfg: TrainConfig, spec: ModelSpec, channels_last: bool, pretrained: str | None = None
) -> torch.nn.Module:
    """The network ``train`` fits: built from ``spec`` (``pretrained``: the weights to start from,
    None = ``train.pretrained``), its leading groups frozen (``train.freeze_groups``), in
    channels_last memory format when the runtime uses it. The benchmarks time this same network."""
    from fashionops.models.backbones import freeze_leading_groups
    from fashionops.models.factory import build_model

    model = build_model(spec, pretrained=pretrained)
    if cfg.freeze_groups:
        frozen = freeze_leading_groups(model, cfg.freeze_groups)
        log.info(
            "train.freeze_groups=%d: %d backbone tensors frozen%s",
            cfg.freeze_groups,
            frozen,
            "" if frozen else f" ({cfg.backbone} is not a pretrained timm backbone: nothing to freeze)",
        )
    return model.to(memory_format=torch.channels_last) if channels_last else model


def run_train(
    cfg: TrainConfig,
    paths: PathsConfig,
    tracking: TrackingConfig,
    *,
    balance: str = "none",
    resume: bool = False,
    run_config: dict[str, Any] | None = None,
    callbacks: list[Callback] | None = None,
) -> dict[str, Any]:
    """Train, keep the best epoch, write the model, checkpoints, reports and the MLflow run.

    ``balance`` is ``prepare.balance`` (``class_weights``: weighted loss, ``weighted_sampler``:
    class-balanced sampling). ``run_config``: the flattened configuration to log as the run's
    params (the CLI passes all of ``params.yaml``; default: what this function was given).
    ``callbacks``: extra Lightning callbacks (a sweep's pruning).
    Returns the ``summary.json`` content (plus fit/total seconds). ``resume=True`` continues from
    ``<paths.classifier_dir>/checkpoints/last.ckpt``.
    """
    from fashionops.models.factory import model_spec, save_model

    if run_config is None:
        run_config = flatten(
            {
                "paths": paths.model_dump(),
                "prepare": {"balance": balance},
                "train": cfg.model_dump(),
                "tracking": tracking.model_dump(),
            }
        )
    out_dir, report_dir = Path(paths.classifier_dir), paths.reports("train")
    ckpt_dir = out_dir / CHECKPOINT_DIR
    last = ckpt_dir / "last.ckpt"
    if resume and not last.is_file():
        raise FashionOpsError(f"--resume: no checkpoint at {last}; start with `fashionops train` (without --resume)")
    if resume:
        check_resumable(last, cfg)
    t_start = time.perf_counter()
    join_as_started_rank()
    runtime = resolve_runtime(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    data: PreparedData = load_prepared(paths.prepared_dir)
    spec = model_spec(cfg, data.classes, data.label_column, data.image_hw, data.attributes)
    # the weights come from the checkpoint on resume: skip loading pretrained ones
    model = build_network(cfg, spec, runtime["channels_last"], pretrained="none" if resume else None)
    weighted = cfg.loss == "weighted_ce" or balance == "class_weights"
    if cfg.loss == "mse" and cfg.task != "autoencoder":
        raise FashionOpsError("train.loss=mse is the autoencoder loss; set train.task=autoencoder")
    lit = FashionLitModule(model, spec, cfg, class_weights=data.class_weights, weighted_loss=weighted)
    dm = FashionDataModule.from_config(
        cfg, spec, data, balance=balance, channels_last=runtime["channels_last"], pin_memory=runtime["cuda"]
    )

    throughput = Throughput()
    trainer = build_trainer(cfg, runtime, ckpt_dir, lit.monitor, None, throughput, callbacks)
    if isinstance(trainer.strategy.launcher, StageLauncher):
        trainer.strategy.launcher.check()
    if not runtime["cuda"]:  # the cores are shared by this machine's ranks
        set_cpu_threads(cfg.cpu_threads, processes=trainer.num_devices)
    run_checkpoint = trainer.checkpoint_callback
    assert isinstance(run_checkpoint, RunCheckpoint)
    if trainer.is_global_zero:  # under DDP only rank 0 touches files and MLflow
        # An earlier run's checkpoints stay until this run has saved its own (RunCheckpoint), and
        # paths.run_file keeps naming the earlier run until this one has finished.
        mark_abandoned_runs(tracking)
        logger = make_logger(tracking, paths, resumable_run_id(tracking, paths, ckpt_dir) if resume else None)
        attach_logger(trainer, logger)
        run_id = start_tracking(tracking, paths, logger, resume, runtime, run_config)
        run_checkpoint.run_info = run_record(tracking, logger)
        logger.experiment.log_artifact(run_id, str(data.root / "labels.json"), artifact_path="model")
    fit_t0 = time.perf_counter()
    fit(trainer, lit, dm, last if resume else None)
    fit_seconds = time.perf_counter() - fit_t0
    if not trainer.is_global_zero:
        return {}

    checkpoint = trainer.checkpoint_callback
    assert isinstance(checkpoint, ModelCheckpoint)
    best_path = Path(checkpoint.best_model_path) if checkpoint.best_model_path else last
    if not best_path.is_file():
        raise FashionOpsError(f"training produced no checkpoint in {ckpt_dir} (was validation skipped?)")
    model.load_state_dict(_best_state(best_path))
    model = model.to(memory_format=torch.contiguous_format)
    save_model(out_dir, model.cpu(), spec)

    name, mode = lit.monitor
    rows = build_history(lit.history, throughput.epochs)
    best = best_row(rows, name, mode) or {}
    train_images = sum(t["train_images"] for t in throughput.epochs)
    train_seconds = sum(t["train_seconds"] for t in throughput.epochs)
    metrics: dict[str, Any] = {
        "best_epoch": best.get("epoch"),
        "best_val_macro_f1": best.get("val_macro_f1"),
        "best_val_acc": best.get("val_acc"),
        "best_val_loss": best.get("val_loss"),
        "epochs_run": len(rows),
        "stopped_early": len(rows) < cfg.epochs,
        "seconds": round(sum(t["epoch_seconds"] for t in throughput.epochs), 3),
        "images_per_s": round(train_images / train_seconds, 2) if train_seconds > 0 else None,
        "device": runtime["device_name"],
        "precision": runtime["precision"],
        "model": f"{spec.backbone}/{spec.head}" if cfg.task == "classifier" else spec.backbone,
        "num_classes": spec.num_classes,
        "train_images": len(dm.datasets["train"]),
        "processes": trainer.world_size,
        "resumed": resume,
    }
    for head in spec.attributes:  # multi-attribute: every extra head's scores at the best epoch
        for key in ("acc", "macro_f1"):
            metrics[f"best_val_{head}_{key}"] = best.get(f"val_{head}_{key}")
    metrics = {k: _finite_or_none(v) for k, v in metrics.items()}
    metrics_path, history_path = report_dir / "metrics.json", report_dir / "history.csv"
    summary_path = report_dir / "summary.json"
    report_dir.mkdir(parents=True, exist_ok=True)
    write_history(history_path, rows)

    client = logger.experiment  # run_id: the run start_tracking opened (this is rank 0)
    metrics["mlflow_run_id"] = run_id
    summary_path.write_text(json.dumps(metrics, indent=2))
    headline = headline_metrics(metrics)
    metrics_path.write_text(json.dumps(headline, indent=2))
    for key, value in headline.items():
        client.log_metric(run_id, key, value)
    client.log_artifact(run_id, str(best_path), artifact_path="checkpoints")
    for path in (metrics_path, summary_path, history_path):
        client.log_artifact(run_id, str(path), artifact_path="train")
    client.log_artifact(run_id, str(out_dir / "model_spec.json"), artifact_path="model")
    client.set_terminated(run_id, "FINISHED")
    record = run_record(tracking, logger)
    write_run_file(paths.run_file, record["run_id"], record["experiment_id"], record["tracking_uri"])
    metrics["total_seconds"] = round(time.perf_counter() - t_start, 2)
    metrics["fit_seconds"] = round(fit_seconds, 2)
    return metrics
