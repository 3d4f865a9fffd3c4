"""Classification metrics and per-class tables from true and predicted class indexes.

Pure functions over numpy arrays: the evaluate stage, the registry's re-scoring and the tests
share them. Keys carry no prefix: the evaluate stage names them ``test/<key>``
(:func:`headline_name`) and declares :data:`TEST_HEADLINE` of them as DVC metrics.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from fashionops.errors import DataError

# The test-split scores a reviewer compares candidates on: ``reports/evaluate/metrics.json`` (a DVC
# metrics file, logged to MLflow under the same names) holds these as ``test/<key>``; the others
# (weighted precision/recall, macro recall = balanced accuracy, specificity, counts) are in
# ``summary.json``.
TEST_HEADLINE = (
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "macro_precision",
    "weighted_f1",
    "macro_auprc",
    "roc_auc_ovr",
    "log_loss",
)
TEST_PREFIX = "test/"
LEGACY_TEST_PREFIX = "test_"  # names before issue #19 (``test_macro_f1``): old registry tags


def headline_name(key: str) -> str:
    """``macro_f1`` -> ``test/macro_f1``: the name in metrics.json, MLflow and registry tags."""
    return TEST_PREFIX + key


def raw_metric_key(name: str) -> str:
    """The :func:`classification_metrics` key of a test metric name, new or legacy
    (``test/macro_f1`` and ``test_macro_f1`` -> ``macro_f1``); other names unchanged."""
    for prefix in (TEST_PREFIX, LEGACY_TEST_PREFIX):
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


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


def present_labels(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    # Classes absent from both truth and predictions say nothing about this test set; averaging
    # their 0/0 scores in would punish a model for the data's gaps (sklearn's default does the same).
    return np.union1d(np.unique(y_true), np.unique(y_pred))


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, proba: np.ndarray | None, n_classes: int
) -> dict[str, float]:
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
    labels = present_labels(y_true, y_pred)
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
        out["log_loss"] = float(log_loss(y_true, proba / proba.sum(axis=1, keepdims=True), labels=np.arange(n_classes)))
    return out


def _balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean recall over the classes present in ``y_true`` (sklearn's definition, without its warning
    for predicted classes absent from the truth)."""
    recalls = [np.mean(y_pred[y_true == c] == c) for c in np.unique(y_true)]
    return float(np.mean(recalls))


def per_class_report(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str]) -> pd.DataFrame:
    """One row per class seen in truth or predictions: precision, recall, f1, support, specificity."""
    from sklearn.metrics import precision_recall_fscore_support

    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    labels = present_labels(y_true, y_pred)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=None, zero_division=0)
    spec = specificity_per_class(confusion(y_true, y_pred, len(classes)))[labels]
    df = pd.DataFrame(
        {
            "class": [classes[int(i)] for i in labels],
            "precision": p,
            "recall": r,
            "f1": f,
            "support": s.astype(int),
            "specificity": spec,
        }
    )
    return df.sort_values(["support", "class"], ascending=[False, True]).reset_index(drop=True)


def misclassified_pairs(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str], top: int = 20) -> pd.DataFrame:
    """The ``top`` most frequent (true, predicted) confusions with their count, share of the true class."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    cm = confusion(y_true, y_pred, len(classes))
    off = cm.copy()
    np.fill_diagonal(off, 0)
    t, p = np.nonzero(off)
    df = pd.DataFrame(
        {
            "true": [classes[int(i)] for i in t],
            "predicted": [classes[int(j)] for j in p],
            "count": off[t, p].astype(int),
        }
    )
    df["share_of_true"] = df["count"] / cm.sum(axis=1)[t]
    df = df.sort_values(["count", "true", "predicted"], ascending=[False, True, True]).head(top)
    return df.reset_index(drop=True)


def report_markdown(report: pd.DataFrame, metrics: dict[str, float], title: str = "Per-class report (test)") -> str:
    """The per-class table as Markdown with the headline metrics on top (a ``train_images``
    column, when the report has one, after ``support``; empty where unknown)."""
    head = ["accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "macro_auprc", "roc_auc_ovr", "log_loss"]
    lines = [f"# {title}", ""]
    lines += [f"- **{k}**: {metrics[headline_name(k)]:.4f}" for k in head if metrics.get(headline_name(k)) is not None]
    train = "train_images" in report
    lines += [
        "",
        "| class | precision | recall | f1 | support |" + (" train images |" if train else "") + " specificity |",
        "|---|---:|---:|---:|---:|" + ("---:|" if train else "") + "---:|",
    ]
    for _, row in report.iterrows():
        cells = [str(row["class"]), f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}"]
        cells.append(str(int(row["support"])))
        if train:
            cells.append("" if pd.isna(row["train_images"]) else str(int(row["train_images"])))
        cells.append(f"{row['specificity']:.4f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
