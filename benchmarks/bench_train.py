"""Training throughput of the ``train`` stage against two baselines (images/s).

Three ways to run the same training steps (same model, batch size, optimiser, schedule,
precision and memory format):

* ``plain``: a hand-written PyTorch loop over the uint8 cache held in memory as one tensor
  (index a batch, flip, ``preprocess_batch``, forward/backward/step) - no Lightning at all;
* ``stage``: what ``fashionops train`` runs: Lightning ``Trainer`` + ``FashionLitModule`` +
  ``FashionDataModule`` (memory-mapped cache, uint8 batches, on-device augmentation);
* ``synthetic``: the same Lightning module fed pre-made, already normalised tensors (no data
  pipeline at all: the compute-only ceiling).

Ratios: ``stage / plain`` (Lightning overhead; target >= 0.95) and ``stage / synthetic`` (data
pipeline overhead; target >= 0.90). Variants are interleaved and repeated; each is timed over
steps after a warm-up, with a device sync at both ends. On a GPU also reports GPU utilisation
during the stage run (``nvidia-smi`` sampled every 100 ms).

    .venv/bin/python benchmarks/bench_train.py --quick
    .venv/bin/python benchmarks/bench_train.py --steps 100 --batch-size 64 --backbone tf_efficientnet_lite0

Data: ``--prepared`` (default ``data/prepared`` when it exists), else ``--images`` real catalogue
images decoded into a temporary cache. Results: ``benchmarks/results/train.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import lightning as L  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.callbacks import Callback  # noqa: E402

from fashionops.config import AugmentConfig, TrainConfig  # noqa: E402
from fashionops.inference.preprocess import preprocess_batch  # noqa: E402
from fashionops.models.factory import model_spec  # noqa: E402
from fashionops.training.callbacks import EpochSeed  # noqa: E402
from fashionops.training.datamodule import FashionDataModule, load_prepared  # noqa: E402
from fashionops.training.lit_module import FashionLitModule  # noqa: E402
from fashionops.training.runtime import resolve_runtime, set_cpu_threads  # noqa: E402
from fashionops.training.stage import build_network  # noqa: E402

warnings.filterwarnings("ignore", message=r".*(validation_step|does not have many workers|litlogger).*")
DEFAULT_CATALOGUE = REPO.parent / "shared" / "data" / "fashion-product-images-small"


def build_cache(catalogue: Path, n_images: int, n_rows: int, out: Path, seed: int = 0) -> Path:
    """A prepared-layout cache of ``n_images`` real images; the train split repeats them to ``n_rows``."""
    from PIL import Image

    styles = pd.read_csv(catalogue / "styles.csv", on_bad_lines="skip")
    styles = styles[styles["id"].map(lambda i: (catalogue / "images" / f"{i}.jpg").is_file())]
    top = styles["articleType"].value_counts().index[:20]
    pick = styles[styles["articleType"].isin(top)].sample(n=min(n_images, len(styles)), random_state=seed)
    classes = sorted(pick["articleType"].unique())
    images = np.zeros((len(pick), 80, 60, 3), np.uint8)
    for i, image_id in enumerate(pick["id"]):
        im = Image.open(catalogue / "images" / f"{image_id}.jpg").convert("RGB")
        images[i] = np.asarray(im if im.size == (60, 80) else im.resize((60, 80)))
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "images.npy", images)
    label_idx = pick["articleType"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    rows = np.resize(np.arange(len(pick)), n_rows)  # repeat real images to fill the steps
    val = np.arange(min(64, len(pick)))
    index = pd.DataFrame(
        {
            "row": np.concatenate([rows, val]),
            "id": np.concatenate([pick["id"].to_numpy()[rows], pick["id"].to_numpy()[val]]),
            "label": np.concatenate([np.array(classes)[label_idx[rows]], np.array(classes)[label_idx[val]]]),
            "label_idx": np.concatenate([label_idx[rows], label_idx[val]]),
            "split": ["train"] * len(rows) + ["val"] * len(val),
            "is_copy": False,
        }
    )
    index["sha256"], index["source_id"] = "", index["id"]
    index.to_parquet(out / "index.parquet", index=False)
    (out / "labels.json").write_text(json.dumps({"column": "articleType", "classes": classes}))
    return out


class StepTimer(Callback):
    """Wall time of training steps ``warmup`` .. end (device-synced), and images in them."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.t0: float | None = None
        self.t1 = 0.0
        self.images = 0

    @staticmethod
    def _sync(pl_module: L.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            self._sync(pl_module)
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.t0 is not None:
            self.images += int(batch[0].shape[0])

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._sync(pl_module)
        self.t1 = time.perf_counter()

    @property
    def images_per_s(self) -> float:
        return self.images / (self.t1 - self.t0) if self.t0 is not None and self.t1 > self.t0 else float("nan")


class SyntheticDataModule(L.LightningDataModule):
    """Pre-made normalised float batches already in memory: no loading, no transform."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, steps: int) -> None:
        super().__init__()
        self.x, self.y, self.steps = x, y, steps

    def train_dataloader(self) -> Any:
        return _Repeat(self.x, self.y, self.steps)


class _Repeat:
    """An iterable of ``steps`` copies of one batch (a list would be taken as many loaders)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, steps: int) -> None:
        self.x, self.y, self.steps = x, y, steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Any:
        for _ in range(self.steps):
            yield self.x, self.y


class GpuUtil:
    """Mean GPU utilisation (%) while the block runs, from ``nvidia-smi`` every 100 ms."""

    def __enter__(self) -> GpuUtil:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run(
                    ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", "0"],
                    capture_output=True,
                    text=True,
                    timeout=5,
                ).stdout.strip()
                self.samples.append(float(out.splitlines()[0]))
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                return
            self._stop.wait(0.1)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    @property
    def mean(self) -> float | None:
        return round(statistics.fmean(self.samples), 1) if self.samples else None


def make_module(cfg: TrainConfig, spec: dict, runtime: dict) -> FashionLitModule:
    """The stage's LightningModule over the stage's network (frozen groups, memory format), random weights."""
    torch.manual_seed(cfg.seed)
    return FashionLitModule(build_network(cfg, spec, runtime["channels_last"], pretrained="none"), spec, cfg)


def trainer_for(runtime: dict, steps: int, timer: StepTimer, cfg: TrainConfig) -> L.Trainer:
    return L.Trainer(
        accelerator=runtime["accelerator"],
        devices=1,
        precision=runtime["precision"],
        max_epochs=1,
        limit_train_batches=steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        benchmark=runtime["cuda"],
        callbacks=[EpochSeed(cfg.seed), timer],
    )


def run_stage(
    cfg: TrainConfig, spec: dict, runtime: dict, data, steps: int, warmup: int, measure_gpu: bool = False
) -> dict[str, Any]:
    lit = make_module(cfg, spec, runtime)
    dm = FashionDataModule(
        data,
        spec,
        batch_size=cfg.batch_size,
        augment=cfg.augment,
        seed=cfg.seed,
        channels_last=runtime["channels_last"],
        pin_memory=runtime["cuda"],
    )
    timer = StepTimer(warmup)
    trainer = trainer_for(runtime, steps, timer, cfg)
    if measure_gpu and runtime["cuda"]:
        with GpuUtil() as util:
            trainer.fit(lit, datamodule=dm)
        return {"images_per_s": timer.images_per_s, "gpu_util_percent": util.mean}
    trainer.fit(lit, datamodule=dm)
    return {"images_per_s": timer.images_per_s}


def run_synthetic(cfg: TrainConfig, spec: dict, runtime: dict, steps: int, warmup: int) -> dict[str, Any]:
    lit = make_module(cfg, spec, runtime)
    device = torch.device("cuda" if runtime["cuda"] else "cpu")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(cfg.batch_size, 3, spec.input_height, spec.input_width, generator=g).to(device)
    if runtime["channels_last"]:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, spec.num_classes, (cfg.batch_size,), generator=g).to(device)
    timer = StepTimer(warmup)
    trainer_for(runtime, steps, timer, cfg).fit(lit, datamodule=SyntheticDataModule(x, y, steps))
    return {"images_per_s": timer.images_per_s}


def run_plain(cfg: TrainConfig, spec: dict, runtime: dict, data, steps: int, warmup: int) -> dict[str, Any]:
    """The hand-written loop: same model/optimiser/schedule/loss/augmentation, no Lightning."""
    device = torch.device("cuda" if runtime["cuda"] else "cpu")
    lit = make_module(cfg, spec, runtime).to(device)
    model = lit.model
    model.train()
    images = torch.from_numpy(np.array(data.images))  # the whole cache in memory (a writable copy)
    train = data.split("train")
    rows = torch.from_numpy(train["row"].to_numpy())
    labels = torch.from_numpy(train["label_idx"].to_numpy())
    opt = torch.optim.AdamW(lit._param_groups(), lr=cfg.lr, fused=True)  # as the stage's optimiser
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps)
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(cfg.seed))
    bf16 = runtime["precision"].startswith("bf16")
    t0 = None
    n = 0
    for step in range(steps):
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
        xb = images[rows[idx]].to(device, non_blocking=True)
        yb = labels[idx].to(device, non_blocking=True)
        if cfg.augment.hflip:
            flip = torch.rand(len(xb), device=device) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(2), xb)
        x = preprocess_batch(xb, spec, device)
        if runtime["channels_last"]:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
        loss = torch.nn.functional.cross_entropy(out.float(), yb, label_smoothing=cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if t0 is not None:
            n += len(xb)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return {"images_per_s": n / (time.perf_counter() - t0)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few steps, one repeat (a smoke run)")
    ap.add_argument("--steps", type=int, help="timed + warm-up steps per run (default 40 CPU / 200 GPU)")
    ap.add_argument("--warmup", type=int, help="untimed first steps (default 5 CPU / 20 GPU)")
    ap.add_argument("--repeats", type=int, help="interleaved repeats of each variant (default 2); best is kept")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: every core allowed)")
    ap.add_argument("--backbone", default="tf_efficientnet_lite0")
    ap.add_argument("--prepared", type=Path, help="a data/prepared directory (default: data/prepared if present)")
    ap.add_argument("--catalogue", type=Path, default=DEFAULT_CATALOGUE)
    ap.add_argument("--images", type=int, default=1024, help="real images decoded when no --prepared")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/results/train.json")
    args = ap.parse_args(argv)

    cuda = torch.cuda.is_available()
    steps = args.steps or ((12 if args.quick else 40) if not cuda else (60 if args.quick else 200))
    warmup = args.warmup if args.warmup is not None else ((3 if args.quick else 5) if not cuda else 20)
    repeats = args.repeats or (1 if args.quick else 2)
    if steps <= warmup:
        ap.error("--steps must exceed --warmup")

    cfg = TrainConfig(
        backbone=args.backbone, pretrained="none", batch_size=args.batch_size, augment=AugmentConfig(hflip=True), seed=0
    )
    runtime = resolve_runtime(cfg)
    threads = None if cuda else set_cpu_threads(args.threads)
    L.seed_everything(0, verbose=False)

    tmp = None
    prepared = args.prepared or (REPO / "data/prepared" if (REPO / "data/prepared/index.parquet").is_file() else None)
    if prepared is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_train_")
        t = time.perf_counter()
        prepared = build_cache(args.catalogue, args.images, steps * args.batch_size, Path(tmp.name) / "prepared")
        print(f"cache: {args.images} real images decoded in {time.perf_counter() - t:.1f}s", flush=True)
    data = load_prepared(prepared)
    if len(data.split("train")) < steps * args.batch_size:
        ap.error(f"{prepared}: train split has fewer than steps x batch = {steps * args.batch_size} rows")
    spec = model_spec(cfg, data.classes, data.label_column, data.image_hw)

    results: dict[str, list[dict[str, Any]]] = {"plain": [], "stage": [], "synthetic": []}
    for r in range(repeats):
        for name in ("plain", "stage", "synthetic"):
            if name == "plain":
                res = run_plain(cfg, spec, runtime, data, steps, warmup)
            elif name == "stage":
                res = run_stage(cfg, spec, runtime, data, steps, warmup, measure_gpu=True)
            else:
                res = run_synthetic(cfg, spec, runtime, steps, warmup)
            results[name].append(res)
            print(f"repeat {r + 1}/{repeats} {name:<9} {res['images_per_s']:8.1f} images/s", flush=True)

    best = {k: max(v["images_per_s"] for v in runs) for k, runs in results.items()}
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    out = {
        "device": runtime["device_name"],
        "precision": runtime["precision"],
        "channels_last": runtime["channels_last"],
        "torch_threads": threads,
        "cpu_count": os.cpu_count(),
        "load_avg_1m": load,
        "platform": platform.platform(),
        "torch": torch.__version__,
        "lightning": L.__version__,
        "backbone": args.backbone,
        "input_hw": [spec.input_height, spec.input_width],
        "batch_size": args.batch_size,
        "steps": steps,
        "warmup": warmup,
        "repeats": repeats,
        "quick": args.quick,
        "prepared": str(prepared) if tmp is None else f"temporary cache of {args.images} real images",
        "images_per_s": {k: round(v, 2) for k, v in best.items()},
        "runs": results,
        "ratio_stage_vs_plain": round(best["stage"] / best["plain"], 4),
        "ratio_stage_vs_synthetic": round(best["stage"] / best["synthetic"], 4),
        "targets": {"stage_vs_plain": 0.95, "stage_vs_synthetic": 0.90},
    }
    out["meets_targets"] = out["ratio_stage_vs_plain"] >= 0.95 and out["ratio_stage_vs_synthetic"] >= 0.90
    if cuda:
        utils = [r.get("gpu_util_percent") for r in results["stage"] if r.get("gpu_util_percent") is not None]
        out["gpu_util_percent"] = max(utils) if utils else None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(
        json.dumps(
            {
                k: out[k]
                for k in ("device", "images_per_s", "ratio_stage_vs_plain", "ratio_stage_vs_synthetic", "meets_targets")
            },
            indent=2,
        )
    )
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
