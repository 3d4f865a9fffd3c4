"""Lightning callbacks of the ``train`` stage: per-epoch reseeding (what makes a resumed run retrace
an uninterrupted one), throughput measurement, the progress display that shows it (a live bar on
a terminal, one log line per epoch otherwise), and the checkpoint callback that records which
MLflow run its checkpoints belong to."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar

from fashionops.atomic import write_json
from fashionops.errors import FashionOpsError
from fashionops.logs import adopt_library_handlers
from fashionops.progress import live
from fashionops.training.runtime import seed_epoch

log = logging.getLogger(__name__)
adopt_library_handlers()  # Lightning, just imported, prints through our handler only
# Beside best/last.ckpt: the MLflow run they belong to (what `train --resume` continues).
CHECKPOINT_RUN_FILE = "mlflow_run.json"
_RUN_KEY = "fashionops_mlflow_run"  # RunCheckpoint's entry in the checkpoint's callback state


class EpochSeed(Callback):
    """Reseed every RNG at the start of each training epoch.

    With the sampler also seeded by epoch, what happens in epoch ``e`` depends on ``(seed, e)``
    and the weights at its start only, which is exactly what ``last.ckpt`` holds.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seed_epoch(self.seed, trainer.current_epoch, trainer.global_rank)


class ProgressiveResize(Callback):
    """Train epoch ``e`` on images of ``sizes[e]`` (height, width) while ``e < len(sizes)``, then at
    the model's own input size (``train.early_epoch_sizes``). Small early epochs are cheap; the last
    ones adapt the weights and the batch-norm statistics to the size the model is used at."""

    def __init__(self, sizes: list[tuple[int, int]]) -> None:
        self.sizes = [(int(h), int(w)) for h, w in sizes]

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # a model with a fixed-size flatten (no global pooling) fails at another size: say so
        # before training rather than with a shape error in the middle of epoch 1
        was_training = pl_module.training
        pl_module.eval()
        try:
            for h, w in sorted(set(self.sizes)):
                probe = torch.zeros(1, 3, h, w, device=pl_module.device)
                with torch.no_grad():
                    pl_module(probe)
        except RuntimeError as exc:
            raise FashionOpsError(
                f"train.early_epoch_sizes: the model cannot take {h}x{w} images ({str(exc)[:120]}); "
                "progressive resizing needs a backbone with global pooling (timm models)"
            ) from exc
        finally:
            pl_module.train(was_training)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        transform = trainer.datamodule.transform  # type: ignore[attr-defined]  # set by fit(datamodule=...)
        epoch = trainer.current_epoch
        transform.set_train_size(self.sizes[epoch] if epoch < len(self.sizes) else None)
        log.info("epoch %d: training on %dx%d images", epoch + 1, *transform.out_hw)


class Throughput(Callback):
    """Training images/s and epoch wall time, measured per epoch (one device sync per epoch)."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []
        self._t0 = self._epoch_t0 = 0.0
        self._images = 0
        self._train_seconds: float | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"epochs": list(self.epochs)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epochs = list(state_dict.get("epochs", []))

    @staticmethod
    def _sync(pl_module: L.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._sync(pl_module)
        self._t0 = self._epoch_t0 = time.perf_counter()
        self._images = 0
        self._train_seconds = None

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._images += int(batch[0].shape[0]) * trainer.world_size

    def _end_train_part(self, pl_module: L.LightningModule) -> None:
        if self._train_seconds is None:
            self._sync(pl_module)
            self._train_seconds = time.perf_counter() - self._t0

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._end_train_part(pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._record(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # no validation this epoch (limit_val_batches=0): close the epoch here
        if not self.epochs or self.epochs[-1]["epoch"] != trainer.current_epoch + 1:
            self._record(trainer, pl_module)

    def _record(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._end_train_part(pl_module)
        seconds = max(self._train_seconds or 0.0, 1e-9)
        self.epochs.append(
            {
                "epoch": trainer.current_epoch + 1,
                "train_images": self._images,
                "train_seconds": seconds,
                "epoch_seconds": time.perf_counter() - self._epoch_t0,
                "images_per_s": self._images / seconds,
            }
        )

    def live_rate(self) -> float:
        elapsed = time.perf_counter() - self._t0
        return self._images / elapsed if elapsed > 0 and self._images else 0.0


class ThroughputBar(TQDMProgressBar):
    """Training progress: on a terminal a live bar with training images/s and the last validation
    macro-F1; when stdout (where Lightning draws) is not a terminal (a log file, a flow relaying
    the stage, ``train > result.json``) no bar frames; either way one log line per epoch
    (:meth:`epoch_line`)."""

    def __init__(self, throughput: Throughput, refresh_rate: int = 1, bar: bool | None = None) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self.throughput = throughput
        if not (bar if bar is not None else live(sys.stdout)):  # Lightning draws its bars on stdout
            self.disable()  # Lightning's own switch: every bar it would draw is created disabled

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        items["img/s"] = f"{self.throughput.live_rate():.0f}"
        for key in ("val_macro_f1", "val_loss"):
            if key in trainer.callback_metrics:
                items[key] = f"{float(trainer.callback_metrics[key]):.4f}"
                break
        return items

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if not trainer.is_global_zero:
            return
        if self.is_disabled:
            log.info("%s", self.epoch_line(trainer))
            return
        from tqdm.contrib.logging import logging_redirect_tqdm

        with logging_redirect_tqdm():  # on a terminal: printed above the bar, not into it
            log.info("%s", self.epoch_line(trainer))

    def epoch_line(self, trainer: L.Trainer) -> str:
        """``epoch 2/3: train_loss 0.512, val_loss 0.498, val_acc 0.871, val_macro_f1 0.803; 136.2 s,
        232 images/s`` (the epoch's metrics as logged, its wall time and training throughput)."""
        metrics = []
        for key, value in trainer.callback_metrics.items():
            if key == "lr" or key.startswith("lr-") or getattr(value, "numel", lambda: 1)() != 1:
                continue
            metrics.append(f"{key} {float(value):.4g}")
        epoch = f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"
        line = f"{epoch}: {', '.join(metrics)}" if metrics else epoch
        timing = self.throughput.epochs[-1] if self.throughput.epochs else None
        if timing is not None:
            line += f"; {timing['epoch_seconds']:.1f} s, {timing['images_per_s']:.0f} images/s"
        return line


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that keeps an earlier run's checkpoints until this run has its own.

    The directory is not emptied when a new run starts (a kill before the first checkpoint would
    leave none); once this run has saved one, files of earlier runs still there are removed.
    ``run_info`` (run id, experiment id, tracking URI: the run ``--resume`` continues, whatever
    ``paths.run_file`` says) is stored in every checkpoint and, for people and tools, in
    ``mlflow_run.json`` (:data:`CHECKPOINT_RUN_FILE`) beside them.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.run_info: dict[str, str] | None = None  # set once the MLflow run exists (rank 0)
        self._recorded = False

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.run_info is not None:  # inside each checkpoint: no kill can separate the two
            state[_RUN_KEY] = dict(self.run_info)
        return state

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        self._record(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self._record(trainer)

    def _record(self, trainer: L.Trainer) -> None:
        if self._recorded or not trainer.is_global_zero or self.dirpath is None or not self.last_model_path:
            return
        ckpt_dir = Path(self.dirpath)
        ours = {Path(p).name for p in (self.last_model_path, self.best_model_path) if p}
        if not all((ckpt_dir / name).is_file() for name in ours):
            return
        for stale in ckpt_dir.glob("*.ckpt"):
            if stale.name not in ours:
                stale.unlink(missing_ok=True)
                log.info("removed %s of an earlier run", stale)
        if self.run_info is not None:
            write_json(ckpt_dir / CHECKPOINT_RUN_FILE, self.run_info)
        self._recorded = True


def checkpoint_run(ckpt_dir: str | Path) -> dict[str, Any] | None:
    """The MLflow run the checkpoints in ``ckpt_dir`` belong to: the one stored in ``last.ckpt``
    (:class:`RunCheckpoint`), else the one in ``mlflow_run.json`` beside it, else None."""
    import json

    from fashionops.models.torch_files import load_weights_only

    last = Path(ckpt_dir) / "last.ckpt"
    if last.is_file():
        ckpt = load_weights_only(last, "--resume")
        for state in ((ckpt.get("callbacks") if isinstance(ckpt, dict) else None) or {}).values():
            if isinstance(state, dict) and isinstance(state.get(_RUN_KEY), dict):
                return dict(state[_RUN_KEY])
    path = Path(ckpt_dir) / CHECKPOINT_RUN_FILE
    return json.loads(path.read_text()) if path.is_file() else None
