"""The ``LightningModule`` of the ``train`` stage: loss, optimiser, schedule and epoch metrics.

The network itself comes from ``fashionops.models.factory`` (``self.model``); this module only
wraps it. The loss follows ``model.loss_kind``: ``ce`` (label smoothing; class weights for
``train.loss: weighted_ce`` or ``prepare.balance: class_weights``), ``hinge`` (SVM head,
``multi_margin_loss``), ``mse`` (autoencoders reconstruct the normalised input). With mixup or
CutMix on (``train.augment``, ``training/mixing.py``) a training batch's loss is the two labels'
losses weighted by their shares of the mixed images.

Metrics are accumulated as device tensors during the epoch (no per-step host sync) and
computed once per epoch in ``on_validation_epoch_end``: train/val loss, accuracy, macro-F1
and the learning rate. That hook runs before Lightning saves ``last.ckpt``, so the epoch's
history row and the epoch-level scheduler step are inside the checkpoint a resume starts from.

The loss is the mean over samples (class-weighted: over their weights), whatever the batching.
Under DDP each rank evaluates its own unpadded shard with rank 0's buffers, and the sums and
predictions of all ranks are gathered before the metrics are computed: they equal a
single-process evaluation of the checkpoint rank 0 saves.

Multi-attribute models (``spec.attributes``; targets ``(B, 1 + K)``, see ``datamodule``): the loss
is ``sum_a train.loss_weights[a] * loss_a`` (absent weights 1.0): the primary's loss as above, each
extra head's a label-smoothed cross-entropy that skips targets ``-1`` (missing or rare values),
averaged over the head's valid targets. ``train_loss``/``val_loss`` are that weighted sum;
``val_acc``/``val_macro_f1`` (the monitored metric: checkpoints, early stopping) stay the
primary's; every extra head adds ``{train,val,test}_<attribute>_{loss,acc,macro_f1}``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from fashionops.config import TrainConfig
from fashionops.data.attributes import IGNORE_INDEX
from fashionops.errors import FashionOpsError
from fashionops.models.spec import ModelSpec
from fashionops.training.distributed import broadcast_buffers, gather_cat, gather_sum
from fashionops.training.mixing import MixedBatch, mix_batch, mixing_enabled


def macro_f1(preds: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Macro-averaged F1 over the classes present in ``target`` or ``preds`` (as scikit-learn)."""
    preds, target = preds.long().flatten(), target.long().flatten()
    if target.numel() == 0:
        return torch.tensor(float("nan"), device=target.device)
    cm = torch.bincount(target * num_classes + preds, minlength=num_classes * num_classes)
    cm = cm.reshape(num_classes, num_classes).double()
    tp = cm.diagonal()
    support, predicted = cm.sum(1), cm.sum(0)
    denom = support + predicted
    f1 = torch.where(denom > 0, 2 * tp / denom.clamp(min=1), torch.zeros_like(tp))
    present = denom > 0
    return f1[present].mean().float()


class _EpochStats:
    """Sums kept on the device during an epoch; read once at its end."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.loss_sum: torch.Tensor | None = None
        self.count: torch.Tensor | float = 0.0  # samples, or their class weights for a weighted loss
        self.preds: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []

    def update(
        self,
        loss: torch.Tensor,
        n: torch.Tensor | float,
        preds: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
    ) -> None:
        """Add one batch: ``loss`` is its mean over ``n`` (samples, or the weights of a weighted mean)."""
        weighted = loss.detach().float() * n
        self.loss_sum = weighted if self.loss_sum is None else self.loss_sum + weighted
        self.count += n
        if preds is not None and targets is not None:
            self.preds.append(preds.detach())
            self.targets.append(targets.detach())


class FashionLitModule(L.LightningModule):
    """Trains a ``factory.build_model`` module (classifier or autoencoder) from ``TrainConfig``."""

    def __init__(
        self,
        model: nn.Module,
        spec: ModelSpec,
        train: TrainConfig,
        class_weights: list[float] | None = None,
        weighted_loss: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.spec = spec
        self.cfg = train
        self.task = spec.task
        self.loss_kind = getattr(model, "loss_kind", spec.loss_kind or "ce")
        self.num_classes = spec.num_classes
        if weighted_loss:
            if class_weights is None:
                raise FashionOpsError(
                    "a class-weighted loss was asked for (train.loss=weighted_ce or prepare.balance=class_weights) "
                    "but data/prepared has no class_weights.json; re-run `fashionops prepare`"
                )
            if len(class_weights) != self.num_classes:
                raise FashionOpsError(
                    f"class_weights.json has {len(class_weights)} weights for {self.num_classes} classes"
                )
            self.register_buffer("class_weights", torch.tensor(class_weights, dtype=torch.float32), persistent=False)
        else:
            self.class_weights = None
        if self.task == "autoencoder" and self.loss_kind != "mse":
            raise FashionOpsError(
                f"task autoencoder needs an autoencoder model (loss mse), got loss {self.loss_kind!r}"
            )
        self.head_names = list(spec.attributes)  # extra heads, in attribute_logits order (after the primary)
        self.head_classes = [len(c) for c in spec.attributes.values()]
        self.primary_weight, self.head_weights = self._loss_weights(spec, train)
        self.mixing = mixing_enabled(train.augment)
        if self.mixing and (self.task != "classifier" or self.head_names):
            raise FashionOpsError(
                "train.augment.mixup_alpha/cutmix_alpha: mixing needs a single-label classifier "
                f"(task classifier, no prepare.labels); got task {self.task!r} with heads {self.head_names}"
            )
        self.history: list[dict[str, float]] = []
        self._train_stats = _EpochStats()
        self._val_stats = _EpochStats()
        self._train_heads = [_EpochStats() for _ in self.head_names]
        self._val_heads = [_EpochStats() for _ in self.head_names]
        self._plateau: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None
        self._plateau_state: dict[str, Any] | None = None
        self._compiled: Any = None

    @staticmethod
    def _loss_weights(spec: ModelSpec, train: TrainConfig) -> tuple[float, list[float]]:
        """(primary weight, extra heads' weights) from ``train.loss_weights`` (absent: 1.0)."""
        names = [spec.label_column, *spec.attributes]
        unknown = sorted(set(train.loss_weights) - set(names))
        if unknown:
            raise FashionOpsError(
                f"train.loss_weights: {unknown} not among the model's attributes {names} (set prepare.labels)"
            )
        if not spec.attributes:  # one head: its loss exactly as in single-label training
            return 1.0, []
        weights = {a: float(train.loss_weights.get(a, 1.0)) for a in names}
        if any(w < 0 for w in weights.values()) or not any(w > 0 for w in weights.values()):
            raise FashionOpsError(f"train.loss_weights: weights must be >= 0 and one > 0 (got {weights})")
        return weights[spec.label_column], [weights[a] for a in spec.attributes]

    # -- model ---------------------------------------------------------------------------
    @property
    def monitor(self) -> tuple[str, Literal["min", "max"]]:
        """(metric, mode) for checkpoints, early stopping and the plateau schedule."""
        return ("val_loss", "min") if self.task == "autoencoder" else ("val_macro_f1", "max")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.compile and self._compiled is None:
            # kept out of the module tree so state_dict keys stay those of self.model
            object.__setattr__(self, "_compiled", torch.compile(self.model))
        # `is None`, not `or`: a compiled module refuses bool() (it has no len())
        return (self.model if self._compiled is None else self._compiled)(x)

    def compute_loss(self, out: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The loss of ``model.loss_kind`` for one batch (outputs in float32)."""
        out = out.float()
        if self.loss_kind == "mse":
            return F.mse_loss(out, x.float())
        if self.loss_kind == "hinge":
            return F.multi_margin_loss(out, y, weight=self.class_weights)
        if self.loss_kind == "ce":
            return F.cross_entropy(out, y, weight=self.class_weights, label_smoothing=self.cfg.label_smoothing)
        raise FashionOpsError(f"unknown loss kind {self.loss_kind!r} on the model")

    def head_loss(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean cross-entropy over the valid targets, their number) of one extra head (0 when none)."""
        valid = (target != IGNORE_INDEX).sum()
        total = F.cross_entropy(
            logits.float(),
            target,
            ignore_index=IGNORE_INDEX,
            label_smoothing=self.cfg.label_smoothing,
            reduction="sum",
        )
        return total / valid.clamp(min=1), valid

    # -- steps ---------------------------------------------------------------------------
    def _multi_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], stats: _EpochStats, heads: list[_EpochStats]
    ) -> torch.Tensor:
        """One batch of a multi-attribute model: the weighted sum of every head's loss."""
        x, y = batch
        model: Any = self.model  # a FashionClassifier (factory.build_model with spec.attributes)
        outs = model.attribute_logits(x)
        primary = y[:, 0]
        loss = self.primary_weight * self.compute_loss(outs[0], x, primary)
        for k, (logits, weight, head) in enumerate(zip(outs[1:], self.head_weights, heads, strict=True), start=1):
            target = y[:, k]
            head_loss, valid = self.head_loss(logits, target)
            loss = loss + weight * head_loss
            keep = target != IGNORE_INDEX
            head.update(head_loss, valid, logits.argmax(1)[keep], target[keep])
        stats.update(loss, x.shape[0], outs[0].argmax(1), primary)
        return loss

    def _step(
        self, batch: tuple[torch.Tensor, torch.Tensor], stats: _EpochStats, heads: list[_EpochStats] | None = None
    ) -> torch.Tensor:
        if self.head_names:
            # no per-head stats given (a one-off loss): throw-away ones, every head still counts
            return self._multi_step(
                batch, stats, heads if heads is not None else [_EpochStats() for _ in self.head_names]
            )
        x, y = batch
        out = self(x)
        loss = self.compute_loss(out, x, y)
        n = self._loss_count(y, x.shape[0])
        if self.task == "autoencoder":
            stats.update(loss, n)
        else:
            stats.update(loss, n, out.argmax(1), y)
        return loss

    def _loss_count(self, y: torch.Tensor, batch_size: int) -> torch.Tensor | int:
        """What one batch's mean loss stands for in the epoch's mean: its samples, or (cross_entropy
        with class weights averages over the samples' weights, not their number) their weights' sum."""
        return self.class_weights[y].sum() if self.loss_kind == "ce" and self.class_weights is not None else batch_size

    def on_train_epoch_start(self) -> None:
        for stats in (self._train_stats, *self._train_heads):
            stats.reset()

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        mixed = mix_batch(batch[0], self.cfg.augment) if self.mixing else None
        if mixed is None:
            return self._step(batch, self._train_stats, self._train_heads)
        return self._mixed_step(mixed, batch[1], self._train_stats)

    def _mixed_step(self, mixed: MixedBatch, y: torch.Tensor, stats: _EpochStats) -> torch.Tensor:
        """One mixed batch: each label's loss weighted by its share of the image."""
        out = self(mixed.images)
        loss = mixed.lam * self.compute_loss(out, mixed.images, y) + (1.0 - mixed.lam) * self.compute_loss(
            out, mixed.images, y[mixed.partner]
        )
        n = self._loss_count(y, y.shape[0])
        # training accuracy of a mixed batch: against each image's own label, as timm reports it
        stats.update(loss, n, out.argmax(1), y)
        return loss

    def on_validation_epoch_start(self) -> None:
        for stats in (self._val_stats, *self._val_heads):
            stats.reset()
        broadcast_buffers(self.model)  # every rank validates the model rank 0 checkpoints

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, self._val_stats, self._val_heads)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, self._val_stats, self._val_heads)

    def on_test_epoch_start(self) -> None:
        for stats in (self._val_stats, *self._val_heads):
            stats.reset()

    def on_test_epoch_end(self) -> None:
        metrics = self._summarise(self._val_stats, "test")
        metrics.update(self._summarise_heads(self._val_heads, "test"))
        self.log_dict({k: v for k, v in metrics.items() if not math.isnan(v)}, sync_dist=False)

    # -- epoch metrics -------------------------------------------------------------------
    def _summarise_heads(self, heads: list[_EpochStats], prefix: str) -> dict[str, float]:
        """``<prefix>_<attribute>_{loss,acc,macro_f1}`` of every extra head."""
        out: dict[str, float] = {}
        for name, n_classes, stats in zip(self.head_names, self.head_classes, heads):
            out.update(self._summarise(stats, f"{prefix}_{name}", n_classes))
        return out

    def _summarise(self, stats: _EpochStats, prefix: str, num_classes: int | None = None) -> dict[str, float]:
        """Loss/accuracy/macro-F1 of one epoch's accumulated stats over all ranks (one host sync).

        Under DDP every rank makes the same collective calls, whatever its own shard held.
        """
        zero = torch.zeros((), device=self.device)
        count = gather_sum(torch.as_tensor(stats.count, dtype=torch.float32, device=self.device))
        loss_sum = gather_sum(stats.loss_sum if stats.loss_sum is not None else zero)
        preds = targets = None
        if self.task != "autoencoder":
            empty = torch.zeros(0, dtype=torch.long, device=self.device)
            preds = gather_cat(torch.cat(stats.preds) if stats.preds else empty)
            targets = gather_cat(torch.cat(stats.targets) if stats.targets else empty)
        if float(count) == 0:
            return {}
        out = {f"{prefix}_loss": float(loss_sum / count)}
        if preds is not None and targets is not None and targets.numel():
            out[f"{prefix}_acc"] = float((preds == targets).float().mean())
            n_classes = self.num_classes if num_classes is None else num_classes
            out[f"{prefix}_macro_f1"] = float(macro_f1(preds, targets, n_classes))
        return out

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        metrics = self._summarise(self._val_stats, "val")
        metrics.update(self._summarise_heads(self._val_heads, "val"))
        fitting = self.trainer.state.fn == "fit"
        if fitting:
            metrics.update(self._summarise(self._train_stats, "train"))
            metrics.update(self._summarise_heads(self._train_heads, "train"))
            metrics["lr"] = float(self.trainer.optimizers[0].param_groups[0]["lr"])
        # Lightning also forwards these to the MLflow logger at the end of the epoch.
        self.log_dict(metrics, prog_bar=False, sync_dist=False)
        if not fitting:
            return
        row = {"epoch": int(self.current_epoch) + 1, **metrics}
        self.history.append(row)
        if self._plateau is not None:
            # Stepped here, not by Lightning after the checkpoint, so a resume restores its state.
            name, _ = self.monitor
            if name in metrics:
                self._plateau.step(metrics[name])

    # -- optimisation --------------------------------------------------------------------
    def _param_groups(self) -> list[dict[str, Any]]:
        """Trainable parameters in optimiser groups, each with its own ``lr`` and weight decay:
        the new layers' first (at ``lr``: the logged rate), the backbone's at ``lr * backbone_lr_scale``."""
        cfg = self.cfg
        backbone = getattr(self.model, "backbone", None)
        in_backbone = {id(p) for p in backbone.parameters()} if isinstance(backbone, nn.Module) else set()
        groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
        for p in self.model.parameters():
            if not p.requires_grad:
                continue
            # no weight decay on biases and norm scales (1-d): decaying them only hurts
            groups.setdefault((id(p) in in_backbone, p.ndim > 1), []).append(p)
        return [
            {
                "params": params,
                "lr": cfg.lr * (cfg.backbone_lr_scale if is_backbone else 1.0),
                "weight_decay": cfg.weight_decay if decays else 0.0,
            }
            for (is_backbone, decays), params in sorted(groups.items(), key=lambda kv: (kv[0][0], not kv[0][1]))
        ]

    def configure_optimizers(self) -> Any:
        cfg = self.cfg
        groups = self._param_groups()
        # fused: the whole update in one kernel (measured on the 2-core CPU: 12 -> 4 ms a step)
        fused = all(p.device.type in ("cpu", "cuda") for group in groups for p in group["params"])
        if cfg.optimizer == "adamw":
            opt: torch.optim.Optimizer = torch.optim.AdamW(groups, lr=cfg.lr, fused=fused)
        elif cfg.optimizer == "adam":
            # Adam's weight decay is an L2 term in the gradient (unlike AdamW's decoupled decay)
            opt = torch.optim.Adam(groups, lr=cfg.lr, fused=fused)
        elif cfg.optimizer == "sgd":
            opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
        else:  # pragma: no cover - the config's Literal rules this out
            raise FashionOpsError(f"train.optimizer: unknown {cfg.optimizer!r}")
        if cfg.scheduler == "none":
            return opt
        if cfg.scheduler == "plateau":
            _, mode = self.monitor
            self._plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt, mode=mode, factor=0.5, patience=max(1, cfg.early_stopping_patience // 3)
            )
            if self._plateau_state is not None:
                self._plateau.load_state_dict(self._plateau_state)
            return opt
        total = max(1, int(self.trainer.estimated_stepping_batches))
        if cfg.scheduler == "onecycle":
            peaks = [group["lr"] for group in groups]
            sched: Any = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=peaks, total_steps=total)
        elif cfg.scheduler == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
        else:  # pragma: no cover
            raise FashionOpsError(f"train.scheduler: unknown {cfg.scheduler!r}")
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # -- checkpoint state ----------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["fashionops"] = {
            "history": list(self.history),
            "plateau": self._plateau.state_dict() if self._plateau is not None else None,
            "spec": self.spec.to_dict(),
            "train": self.cfg.model_dump(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("fashionops") or {}
        self.history = list(state.get("history", []))
        self._plateau_state = state.get("plateau")
