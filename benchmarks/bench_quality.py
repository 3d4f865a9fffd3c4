"""Classifier quality levers, side by side on one prepared split (issue 12): accuracy, not speed.

Each *run* trains the ``train`` stage (``run_train``, the stage's own code) with ``--set``-style
overrides on top of ``params.yaml`` into a scratch directory (the workspace's model, reports and
MLflow store are never written), then scores the validation and the test split with the saved
model, each image alone (``plain``) and averaged with its mirror image (``flip``: mean logits, as
``train.flip_tta`` makes the Predictor do). Choose on ``val``; ``test`` is reported beside it.

    # one lever against the current params (the default itself: no overrides)
    .venv/bin/python benchmarks/bench_quality.py run default
    .venv/bin/python benchmarks/bench_quality.py run lite2 train.backbone=tf_efficientnet_lite2 \\
        train.pretrained=efficientnet_lite2
    # the chosen default over several seeds (mean and spread); a candidate under its own name
    .venv/bin/python benchmarks/bench_quality.py seeds --seeds 42 1 2
    .venv/bin/python benchmarks/bench_quality.py seeds train.batch_size=32 --name bs32 --seeds 1 2
    # (overrides before --seeds: that option takes every number after it)
    # seed 42 from an earlier `run epochs4 train.epochs=4` instead of training it again
    .venv/bin/python benchmarks/bench_quality.py seeds train.epochs=4 --name epochs4 --lever 42=epochs4
    # score an already trained model directory without training (e.g. models/classifier)
    .venv/bin/python benchmarks/bench_quality.py score main --model-dir models/classifier
    # what each lever costs: training images/s of every variant, side by side in one process
    # (the train stage's own LightningModule on random batches: bench_train.py's synthetic run)
    .venv/bin/python benchmarks/bench_quality.py cost

Results: ``benchmarks/results/quality_levers.json``, ``quality_cost.json`` (one entry per run name, replaced when run
again) and ``benchmarks/results/quality_seeds.json``. Training seconds are comparable only between
runs on one machine under the same load; ``machine`` records the CPU and the load average.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO))  # benchmarks.bench_train (training_cost)

from fashionops.atomic import write_text  # noqa: E402
from fashionops.config import Params, load_params  # noqa: E402

log = logging.getLogger("bench_quality")
RESULTS = REPO / "benchmarks" / "results"
SCORES = ("accuracy", "macro_f1", "macro_auprc", "log_loss")
TRAIN_KEYS = ("seconds", "images_per_s", "best_epoch", "best_val_macro_f1", "best_val_acc", "epochs_run")


def machine() -> dict[str, Any]:
    """What the numbers were measured on (training seconds depend on it)."""
    return {
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "platform": platform.platform(),
    }


def split_images(prepared_dir: Path, split: str, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 NHWC images, label indexes into ``classes``) of one split, oversampled copies excluded."""
    import pandas as pd

    index = pd.read_parquet(prepared_dir / "index.parquet")
    part = index[index["split"] == split]
    if "is_copy" in part:
        part = part[~part["is_copy"].astype(bool)]
    part = part.sort_values("row")
    lookup = {c: i for i, c in enumerate(classes)}
    y = part["label"].map(lookup).to_numpy()
    images = np.load(prepared_dir / "images.npy", mmap_mode="r")
    return np.ascontiguousarray(images[part["row"].to_numpy()]), y.astype(np.int64)


def score_model(model_dir: Path, prepared_dir: Path) -> dict[str, Any]:
    """``{split}_{plain,flip}`` scores of a saved classifier on the val and test splits."""
    from fashionops.evaluation.metrics import classification_metrics
    from fashionops.inference.predictor import Predictor

    loaded = Predictor.from_dir(model_dir)
    # both views from one model, whatever its own flip_tta says
    plain = Predictor(loaded.module, loaded.spec.model_copy(update={"flip_tta": False}))
    flip = Predictor(loaded.module, loaded.spec.model_copy(update={"flip_tta": True}))
    out: dict[str, Any] = {}
    for split in ("val", "test"):
        images, y = split_images(prepared_dir, split, plain.classes)
        for view, predictor in (("plain", plain), ("flip", flip)):
            t0 = time.perf_counter()
            proba = predictor.predict_proba(images)
            scores = classification_metrics(y, proba.argmax(1), proba, len(plain.classes))
            out[f"{split}_{view}"] = {k: round(float(scores[k]), 6) for k in SCORES}
            out[f"{split}_{view}"]["n"] = int(len(y))
            out[f"{split}_{view}"]["seconds"] = round(time.perf_counter() - t0, 2)
    return out


def train_and_score(name: str, overrides: list[str], work: Path, params_path: Path) -> dict[str, Any]:
    """Train with ``overrides`` into ``work/name`` (own MLflow store there) and score the result."""
    from fashionops.training.stage import run_train

    out = work / name
    scratch = [
        f"paths.classifier_dir={out / 'classifier'}",
        f"paths.reports_dir={out / 'reports'}",
        f"tracking.tracking_uri=sqlite:///{out / 'mlflow.db'}",
        f"tracking.artifact_location={out / 'artifacts'}",
    ]
    p: Params = load_params(params_path, [*overrides, *scratch])
    t0 = time.perf_counter()
    metrics = run_train(p.train, p.paths, p.tracking, balance=p.prepare.balance, run_config=p.flat())
    result = {
        "name": name,
        "overrides": overrides,
        "train": {k: metrics.get(k) for k in TRAIN_KEYS},
        "train_wall_seconds": round(time.perf_counter() - t0, 1),
        **score_model(out / "classifier", Path(p.paths.prepared_dir)),
    }
    return result


def train_summary(model_dir: Path) -> dict[str, Any]:
    """The train stage's summary.json of ``model_dir``: beside it (``<run>/classifier`` +
    ``<run>/reports``, as :func:`train_and_score` lays out) or the workspace's (``models/classifier``)."""
    for root in (model_dir.parent, model_dir.parent.parent):
        path = root / "reports" / "train" / "summary.json"
        if path.is_file():
            return dict(json.loads(path.read_text()))
    return {}


def seed_run(seed: int, model_dir: str | None, overrides: list[str], work: Path, params_path: Path) -> dict[str, Any]:
    """One seed: trained here, or (``model_dir``) a model already trained with that seed, scored."""
    if model_dir is None:
        return train_and_score(f"seed{seed}", [*overrides, f"train.seed={seed}"], work, params_path)
    prepared = Path(load_params(params_path, overrides).paths.prepared_dir)
    return score_trained(f"seed{seed}", Path(model_dir), prepared)


def lever_run(seed: int, name: str, overrides: list[str], params_path: Path, levers_path: Path) -> dict[str, Any]:
    """This seed's run taken from ``run NAME``'s entry in ``levers_path`` (quality_levers.json),
    which must have been trained with the same ``overrides`` and with ``seed``."""
    entry = json.loads(levers_path.read_text()).get(name) if levers_path.is_file() else None
    if entry is None:
        raise SystemExit(f"{levers_path}: no lever {name!r}")
    trained_seed = load_params(params_path, entry.get("overrides", [])).train.seed
    if list(entry.get("overrides", [])) != list(overrides) or trained_seed != seed:
        raise SystemExit(
            f"{levers_path}: {name!r} was trained with {entry.get('overrides')} and train.seed {trained_seed}, "
            f"not {overrides} and train.seed {seed}"
        )
    kept = {k: v for k, v in entry.items() if k not in ("name", "machine", "measured_at")}
    return {"name": f"seed{seed}", "from_lever": name, **kept}


def score_trained(name: str, model_dir: Path, prepared_dir: Path) -> dict[str, Any]:
    """Scores of a model trained elsewhere, with its train stage summary (when found beside it)."""
    train = train_summary(model_dir)
    return {
        "name": name,
        "model_dir": str(model_dir),
        "train": {k: train.get(k) for k in TRAIN_KEYS},
        **score_model(model_dir, prepared_dir),
    }


DEFAULT_VARIANT = "lite0 96x72 freeze 3 (default)"
# lever name -> TrainConfig overrides whose training cost ``cost`` measures (the default first)
COST_VARIANTS: dict[str, dict[str, Any]] = {
    "lite0 80x60 freeze 3 (old default)": {},
    DEFAULT_VARIANT: {"input_height": 96, "input_width": 72},
    "lite0 112x84 freeze 3": {"input_height": 112, "input_width": 84},
    "lite0 128x96 freeze 3": {"input_height": 128, "input_width": 96},
    "lite0 80x60 freeze 1": {"freeze_groups": 1},
    "lite0 80x60 freeze 0": {"freeze_groups": 0},
    "lite0 80x60 freeze 5": {"freeze_groups": 5},
    "lite1 80x60 freeze 3": {"backbone": "tf_efficientnet_lite1"},
    "lite2 80x60 freeze 3": {"backbone": "tf_efficientnet_lite2"},
    "lite0 96x72 freeze 3 batch 32": {"input_height": 96, "input_width": 72, "batch_size": 32},
    "lite0 96x72 freeze 4 batch 32": {"input_height": 96, "input_width": 72, "batch_size": 32, "freeze_groups": 4},
}


def training_cost(
    steps: int = 12, batch_size: int = 64, variants: dict[str, dict[str, Any]] | None = None
) -> dict[str, float]:
    """Training images/s of each of ``variants`` (default :data:`COST_VARIANTS`) on random batches
    (53 classes, random weights), one after the other in this process: the train stage's own
    network, LightningModule and optimiser (``bench_train``'s synthetic run, so the cost follows
    the stage), ``steps`` timed batches of ``batch_size`` images, or as many images in the
    variant's batch size, after 3 warm-up steps (oneDNN picks its kernels)."""
    from benchmarks.bench_train import run_synthetic
    from fashionops.config import TrainConfig
    from fashionops.models.factory import model_spec
    from fashionops.training.runtime import resolve_runtime

    classes = [f"c{i}" for i in range(53)]
    out: dict[str, float] = {}
    for name, overrides in (COST_VARIANTS if variants is None else variants).items():
        cfg = TrainConfig(**{"pretrained": "none", "freeze_groups": 3, "batch_size": batch_size, **overrides})
        spec = model_spec(cfg, classes, "articleType", (80, 60))
        batches = steps * batch_size // cfg.batch_size  # the same number of images for every batch size
        speed = run_synthetic(cfg, spec, resolve_runtime(cfg), steps=3 + batches, warmup=3)["images_per_s"]
        out[name] = round(speed, 1)
        log.info("%s: %.1f images/s", name, out[name])
    return out


def record(path: Path, key: str, entry: dict[str, Any]) -> None:
    """Put ``entry`` under ``key`` in the JSON results file (atomically; other keys kept)."""
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[key] = {**entry, "machine": machine(), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_text(path, json.dumps(data, indent=1) + "\n")


def spread(values: list[float]) -> dict[str, float]:
    """Mean, sample standard deviation, min and max (std 0 for one value)."""
    return {
        "mean": round(statistics.fmean(values), 6),
        "std": round(statistics.stdev(values), 6) if len(values) > 1 else 0.0,
        "min": round(min(values), 6),
        "max": round(max(values), 6),
    }


def summarise_seeds(runs: list[dict[str, Any]], view: str) -> dict[str, Any]:
    """Mean/spread over seed runs of every score of ``{val,test}_{view}`` and the training seconds."""
    out: dict[str, Any] = {}
    for split in ("val", "test"):
        for score in SCORES:
            out[f"{split}/{score}"] = spread([r[f"{split}_{view}"][score] for r in runs])
    seconds = [r["train"]["seconds"] for r in runs if r["train"].get("seconds") is not None]
    if seconds:
        out["train/seconds"] = spread(seconds)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, default=REPO / "params.yaml")
    ap.add_argument("--work", type=Path, default=None, help="scratch directory (default: a temporary one)")
    sub = ap.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train one lever and score it")
    run.add_argument("name")
    run.add_argument("overrides", nargs="*", help="section.key=value, as --set")
    seeds = sub.add_parser("seeds", help="the current params over several train.seed values")
    seeds.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    seeds.add_argument("--name", default="default", help="its entry in quality_seeds.json (candidates: the lever)")
    seeds.add_argument(
        "--trained",
        action="append",
        default=[],
        metavar="SEED=DIR",
        help="score this already trained model for SEED instead of training it (e.g. 42=models/classifier "
        "after `make run` with train.seed 42)",
    )
    seeds.add_argument(
        "--lever",
        action="append",
        default=[],
        metavar="SEED=NAME",
        help="take SEED's run from quality_levers.json's NAME (a `run` with the same overrides and that seed)",
    )
    seeds.add_argument("overrides", nargs="*")
    cost = sub.add_parser("cost", help="training images/s of each lever's model, side by side")
    cost.add_argument("--steps", type=int, default=12)
    score = sub.add_parser("score", help="score a trained model directory (no training)")
    score.add_argument("name")
    score.add_argument("--model-dir", type=Path, default=REPO / "models" / "classifier")
    score.add_argument("overrides", nargs="*", help="what the model was trained with (recorded, not applied)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    with tempfile.TemporaryDirectory(prefix="bench_quality_") as tmp:
        work = args.work or Path(tmp)
        if args.command == "cost":
            speeds = training_cost(args.steps)
            base = next(iter(speeds.values()))
            entry: dict[str, Any] = {
                "images_per_s": speeds,
                "time_vs_old_default": {k: round(base / v, 2) for k, v in speeds.items()},
                "time_vs_default": {k: round(speeds[DEFAULT_VARIANT] / v, 2) for k, v in speeds.items()},
            }
            record(RESULTS / "quality_cost.json", "training", entry)
        elif args.command == "score":
            prepared = Path(load_params(args.params).paths.prepared_dir)
            entry = {"overrides": args.overrides, **score_trained(args.name, args.model_dir, prepared)}
            record(RESULTS / "quality_levers.json", args.name, entry)
        elif args.command == "run":
            entry = train_and_score(args.name, args.overrides, work, args.params)
            record(RESULTS / "quality_levers.json", args.name, entry)
        else:
            trained = dict(item.split("=", 1) for item in args.trained)
            levers = dict(item.split("=", 1) for item in args.lever)
            runs = [
                lever_run(s, levers[str(s)], args.overrides, args.params, RESULTS / "quality_levers.json")
                if str(s) in levers
                else seed_run(s, trained.get(str(s)), args.overrides, work, args.params)
                for s in args.seeds
            ]
            view = "flip" if load_params(args.params, args.overrides).train.flip_tta else "plain"
            entry = {
                "seeds": args.seeds,
                "overrides": args.overrides,
                "view": view,
                "summary": summarise_seeds(runs, view),
                "runs": runs,
            }
            record(RESULTS / "quality_seeds.json", args.name, entry)
            entry = {"name": args.name, **entry}
    log.info("%s", json.dumps({k: v for k, v in entry.items() if k != "runs"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
