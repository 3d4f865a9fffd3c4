"""``evaluate`` stage: test-split metrics, per-class report, confusion pictures, MLflow logging.

Scores either the trained model in ``train.out_dir`` (default) or any MLflow pyfunc classifier
(``--model-uri``), on the prepared cache's test split (default) or a labelled catalogue (``--data``).
Writes ``evaluate.out_dir/{metrics.json, per_class.csv, per_class.md, misclassified_pairs.csv,
predictions.csv, confusion_matrix.png, per_class_f1.png, training_curves.png}``; metric keys are
prefixed ``test_`` (the registry compares on ``test_macro_f1``).
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fashionops.atomic import write_text
from fashionops.config import Params
from fashionops.errors import DataError, FashionOpsError

REPORT_FILES = ["metrics.json", "per_class.csv", "per_class.md", "misclassified_pairs.csv", "predictions.csv",
                "confusion_matrix.png", "per_class_f1.png", "training_curves.png"]


# --------------------------------------------------------------------------- metrics
def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) counts, rows = true class, columns = predicted class."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return cm


def specificity_per_class(cm: np.ndarray) -> np.ndarray:
    """TN / (TN + FP) for each class of a confusion matrix (NaN when a class has no negatives)."""
    cm = np.asarray(cm, dtype=float)
    total = cm.sum()
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    tn = total - tp - fp - fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tn + fp > 0, tn / (tn + fp), np.nan)


def _present_labels(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    # Classes absent from both truth and predictions say nothing about this test set; averaging
    # their 0/0 scores in would punish a model for the data's gaps (sklearn's default does the same).
    return np.union1d(np.unique(y_true), np.unique(y_pred))


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], proba: np.ndarray | None,
                           n_classes: int) -> dict[str, float]:
    """Accuracy, balanced accuracy, macro/weighted P/R/F1, macro specificity, OvR ROC-AUC, macro AUPRC, log loss.

    ``proba`` (N, n_classes) rows sum to 1. Precision of a class never predicted is 0 (not NaN).
    ROC-AUC and AUPRC are one-vs-rest macro averages over classes with both positives and
    negatives in ``y_true``; NaN if there is none. Keys carry no prefix.
    """
    from sklearn.metrics import (
        accuracy_score,
        average_precision_score,
        log_loss,
        precision_recall_fscore_support,
        roc_auc_score,
    )

    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.size == 0:
        raise DataError("no labelled samples to evaluate")
    if y_true.shape != y_pred.shape:
        raise DataError(f"y_true has {y_true.size} labels but y_pred has {y_pred.size}")
    labels = _present_labels(y_true, y_pred)
    out: dict[str, float] = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(_balanced_accuracy(y_true, y_pred)),
        "n_samples": float(y_true.size),
        "n_classes": float(len(np.unique(y_true))),
    }
    for avg in ("macro", "weighted"):
        p, r, f, _s = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=avg, zero_division=0)
        out.update({f"{avg}_precision": float(p), f"{avg}_recall": float(r), f"{avg}_f1": float(f)})
    spec = specificity_per_class(confusion(y_true, y_pred, n_classes))[labels]
    out["macro_specificity"] = float(np.nanmean(spec)) if np.isfinite(spec).any() else float("nan")
    if proba is not None:
        proba = np.asarray(proba, dtype=np.float64)
        if proba.shape != (y_true.size, n_classes):
            raise DataError(f"probabilities have shape {proba.shape}, expected {(y_true.size, n_classes)}")
        aucs, aps = [], []
        for c in np.unique(y_true):
            pos = y_true == c
            if pos.all():
                continue
            aucs.append(roc_auc_score(pos, proba[:, c]))
            aps.append(average_precision_score(pos, proba[:, c]))
        out["roc_auc_ovr"] = float(np.mean(aucs)) if aucs else float("nan")
        out["macro_auprc"] = float(np.mean(aps)) if aps else float("nan")
        # sklearn clips at float eps itself; renormalise so float32 softmax rounding is no error
        out["log_loss"] = float(log_loss(y_true, proba / proba.sum(axis=1, keepdims=True),
                                         labels=np.arange(n_classes)))
    return out


def _balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean recall over the classes present in ``y_true`` (sklearn's definition, without its warning
    for predicted classes absent from the truth)."""
    recalls = [np.mean(y_pred[y_true == c] == c) for c in np.unique(y_true)]
    return float(np.mean(recalls))


def per_class_report(y_true: Sequence[int], y_pred: Sequence[int], classes: Sequence[str]) -> pd.DataFrame:
    """One row per class seen in truth or predictions: precision, recall, f1, support, specificity."""
    from sklearn.metrics import precision_recall_fscore_support

    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    labels = _present_labels(y_true, y_pred)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=None, zero_division=0)
    spec = specificity_per_class(confusion(y_true, y_pred, len(classes)))[labels]
    df = pd.DataFrame({"class": [classes[i] for i in labels], "precision": p, "recall": r, "f1": f,
                       "support": s.astype(int), "specificity": spec})
    return df.sort_values(["support", "class"], ascending=[False, True]).reset_index(drop=True)


def misclassified_pairs(y_true: Sequence[int], y_pred: Sequence[int], classes: Sequence[str],
                        top: int = 20) -> pd.DataFrame:
    """The ``top`` most frequent (true, predicted) confusions with their count, share of the true class."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    cm = confusion(y_true, y_pred, len(classes))
    off = cm.copy()
    np.fill_diagonal(off, 0)
    t, p = np.nonzero(off)
    df = pd.DataFrame({"true": [classes[i] for i in t], "predicted": [classes[j] for j in p],
                       "count": off[t, p].astype(int)})
    df["share_of_true"] = df["count"] / cm.sum(axis=1)[t]
    df = df.sort_values(["count", "true", "predicted"], ascending=[False, True, True]).head(top)
    return df.reset_index(drop=True)


def report_markdown(report: pd.DataFrame, metrics: dict[str, float], title: str = "Per-class report (test)") -> str:
    """The per-class table as Markdown with the headline metrics on top."""
    head = ["accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "macro_auprc", "roc_auc_ovr", "log_loss"]
    lines = [f"# {title}", ""]
    lines += [f"- **{k}**: {metrics[f'test_{k}']:.4f}" for k in head
              if f"test_{k}" in metrics and metrics[f"test_{k}"] is not None]
    lines += ["", "| class | precision | recall | f1 | support | specificity |", "|---|---:|---:|---:|---:|---:|"]
    for row in report.itertuples(index=False):
        lines.append(f"| {row[0]} | {row[1]:.3f} | {row[2]:.3f} | {row[3]:.3f} | {int(row[4])} | {row[5]:.4f} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- scoring
@dataclass
class Scored:
    """Predictions of one model on one labelled set."""

    proba: np.ndarray  # (N, C) over ``classes``
    y_true: np.ndarray  # indexes into ``classes``
    classes: list[str]
    label_column: str
    source: str
    excluded: dict[str, int] = field(default_factory=dict)  # unknown class -> images dropped

    @property
    def y_pred(self) -> np.ndarray:
        return self.proba.argmax(axis=1)


@dataclass
class _Model:
    classes: list[str]
    label_column: str
    predict_proba: Any  # callable(list of images or uint8 NHWC) -> (N, C)
    input_hw: tuple[int, int] | None = None  # resize here (like the cache) when known


def _local_model(model_dir: str | Path, batch_size: int) -> _Model:
    import torch

    from fashionops.inference.preprocess import preprocess_batch
    from fashionops.models.factory import load_model

    module, spec = load_model(model_dir)
    if spec.get("task", "classifier") != "classifier":
        raise FashionOpsError(f"{model_dir} holds a {spec.get('task')} model; evaluate needs a classifier")

    def predict(images: Any) -> np.ndarray:
        out = []
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                x = preprocess_batch(images[start:start + batch_size], spec, "cpu")
                out.append(torch.softmax(module(x).float(), dim=1).numpy())
        return np.concatenate(out).astype(np.float64)

    return _Model(list(spec["classes"]), spec.get("label_column", "articleType"), predict,
                  (int(spec["input_height"]), int(spec["input_width"])))


def _png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG")  # lossless
    return buf.getvalue()


def _pyfunc_model(uri: str, params: Params, batch_size: int) -> _Model:
    """A registered/logged classifier pyfunc; classes and label column from its metadata."""
    import mlflow

    from fashionops.registry.pyfunc import images_frame
    from fashionops.tracking import configure

    configure(params)
    try:
        model = mlflow.pyfunc.load_model(uri)
    except Exception as exc:  # noqa: BLE001 - MlflowException, OSError: all mean "cannot load this URI"
        raise FashionOpsError(f"cannot load model {uri!r}: {str(exc)[:300]}") from exc
    meta = (model.metadata.metadata or {}) if model.metadata else {}
    classes = meta.get("classes")
    if not classes:
        raise FashionOpsError(f"model {uri!r} has no 'classes' in its metadata; not a fashionops classifier")

    def predict(images: Any) -> np.ndarray:
        out = []
        for start in range(0, len(images), batch_size):
            # encoded PNG bytes: exactly the model's input schema (binary), lossless
            cells = [img if isinstance(img, bytes) else _png_bytes(img) for img in images[start:start + batch_size]]
            res = model.predict(images_frame(cells))
            out.append(np.asarray([np.asarray(p, dtype=np.float64) for p in res["probabilities"]]))
        return np.concatenate(out)

    return _Model(list(classes), meta.get("label_column") or "articleType", predict)


def _encode_labels(labels: Sequence[str], classes: list[str]) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """(kept mask, class indexes of kept rows, unknown class -> count)."""
    pos = {c: i for i, c in enumerate(classes)}
    labels = pd.Series(list(labels), dtype=object).astype(str)
    known = labels.map(pos)
    mask = known.notna().to_numpy()
    excluded = labels[~mask].value_counts().to_dict()
    return mask, known[mask].astype(np.int64).to_numpy(), {str(k): int(v) for k, v in excluded.items()}


def score_test_split(model: _Model, prepared_dir: str | Path) -> Scored:
    """Score the test split of the prepared cache (oversampled copies excluded)."""
    prepared_dir = Path(prepared_dir)
    for name in ("images.npy", "index.parquet"):
        if not (prepared_dir / name).is_file():
            raise FashionOpsError(f"{prepared_dir / name} not found; run `fashionops prepare`")
    index = pd.read_parquet(prepared_dir / "index.parquet")
    test = index[index["split"] == "test"]
    if "is_copy" in test:
        test = test[~test["is_copy"].astype(bool)]
    if test.empty:
        raise DataError(f"{prepared_dir}: the test split is empty")
    mask, y_true, excluded = _encode_labels(test["label"], model.classes)
    rows = test["row"].to_numpy()[mask]
    if rows.size == 0:
        raise DataError(f"none of the test-split classes are known to the model (unknown: {excluded})")
    images = np.load(prepared_dir / "images.npy", mmap_mode="r")
    proba = model.predict_proba(np.ascontiguousarray(images[np.sort(rows)]))
    order = np.argsort(np.argsort(rows))  # images were read in sorted row order
    return Scored(proba[order], y_true, model.classes, model.label_column, f"{prepared_dir} (test split)", excluded)


def score_catalogue(model: _Model, data_dir: str | Path) -> Scored:
    """Score a labelled catalogue (Kaggle or folder-per-class layout) with the model's label column."""
    from fashionops.data.catalogue import load_catalogue
    from fashionops.data.imaging import load_rgb, resize_rgb

    cat = load_catalogue(data_dir)
    if model.label_column not in cat:
        raise DataError(f"{data_dir}: no {model.label_column!r} column, the model's label column")
    cat = cat[cat[model.label_column].notna()]
    mask, y_true, excluded = _encode_labels(cat[model.label_column], model.classes)
    files = cat["file"].to_numpy()[mask]
    if files.size == 0:
        raise DataError(f"{data_dir}: no image of a class the model knows (found: {excluded})")
    images = [load_rgb(f, name=str(f)) for f in files]
    if model.input_hw is not None:  # same PIL resize as the prepared cache
        images = np.stack([resize_rgb(img, *model.input_hw) for img in images])
    return Scored(model.predict_proba(images), y_true, model.classes, model.label_column, str(data_dir), excluded)


# --------------------------------------------------------------------------- stage
def write_reports(scored: Scored, out_dir: str | Path, history_csv: str | Path | None,
                  top_misclassified: int = 20) -> dict[str, Any]:
    """Every evaluate output from one scored set; returns the ``test_``-prefixed metrics."""
    from fashionops.evaluation.plots import plot_confusion_matrix, plot_per_class_f1, plot_training_curves

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    y_true, y_pred, classes = scored.y_true, scored.y_pred, scored.classes
    raw = classification_metrics(y_true, y_pred, scored.proba, len(classes))
    metrics: dict[str, Any] = {f"test_{k}": (None if np.isnan(v) else v) for k, v in raw.items()}
    metrics["test_n_excluded"] = float(sum(scored.excluded.values()))
    report = per_class_report(y_true, y_pred, classes)
    pairs = misclassified_pairs(y_true, y_pred, classes, top_misclassified)
    write_text(out / "per_class.csv", report.to_csv(index=False))
    write_text(out / "per_class.md", report_markdown(report, metrics))
    write_text(out / "misclassified_pairs.csv", pairs.to_csv(index=False))
    write_text(out / "predictions.csv", pd.DataFrame(
        {"actual": [classes[i] for i in y_true], "predicted": [classes[i] for i in y_pred]}).to_csv(index=False))
    seen = _present_labels(y_true, y_pred)
    plot_confusion_matrix(confusion(y_true, y_pred, len(classes))[np.ix_(seen, seen)],
                          [classes[i] for i in seen], out / "confusion_matrix.png")
    plot_per_class_f1(report, out / "per_class_f1.png")
    history = pd.read_csv(history_csv) if history_csv and Path(history_csv).is_file() else None
    plot_training_curves(history, out / "training_curves.png")
    write_text(out / "metrics.json", json.dumps(metrics, indent=2))  # last: its presence means complete
    return metrics


def _history_path(params: Params) -> Path:
    report_dir = getattr(params.train, "report_dir", None) or "reports/train"
    return Path(report_dir) / "history.csv"


def run_evaluate(params: Params, model_uri: str | None = None, data_dir: str | None = None) -> dict[str, Any]:
    """Score a classifier and write/log the evaluation reports.

    ``model_uri``: an MLflow pyfunc URI (default: the trained model in ``train.out_dir``).
    ``data_dir``: a labelled catalogue (default: the prepared cache's test split). Images of classes
    the model does not know are excluded and reported. The default stage logs to the pipeline's
    MLflow run; scoring another model or data set gets its own run in the same experiment.
    """
    import mlflow

    from fashionops.tracking import configure, pipeline_run, run_tags

    cfg = params.evaluate
    model = (_pyfunc_model(model_uri, params, cfg.batch_size) if model_uri
             else _local_model(params.train.out_dir, cfg.batch_size))
    scored = score_catalogue(model, data_dir) if data_dir else score_test_split(model, params.prepare.out_dir)
    metrics = write_reports(scored, cfg.out_dir, _history_path(params), cfg.top_misclassified)

    out = Path(cfg.out_dir)
    if model_uri or data_dir:
        configure(params)
        ctx = mlflow.start_run(experiment_id=configure(params), run_name="evaluate",
                               tags={**run_tags(params), "evaluate_model_uri": model_uri or params.train.out_dir,
                                     "evaluate_data": scored.source})
    else:
        ctx = pipeline_run(params)
    with ctx as run:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None})
        for name in REPORT_FILES:
            mlflow.log_artifact(str(out / name), artifact_path="evaluate")
        run_id = run.info.run_id
    return {"metrics": metrics, "excluded_classes": scored.excluded, "data": scored.source,
            "model": model_uri or str(params.train.out_dir), "out_dir": str(out), "mlflow_run_id": run_id}
