"""Report pictures for the ``evaluate`` and ``index`` stages (matplotlib, Agg, written atomically)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

matplotlib.use("Agg")  # headless: stages run under DVC/Prefect without a display
import matplotlib.pyplot as plt

from fashionops.atomic import atomic_path

CELL_LABEL_SHARE = 0.02  # confusion-matrix cells holding at least this share of their row get a number


def save_figure(fig: plt.Figure, path: str | Path, dpi: int = 100) -> Path:
    """Save ``fig`` as PNG via a temp file + rename so a crash never leaves a half-written image."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png", bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def plot_confusion_matrix(
    cm: np.ndarray,
    classes: Sequence[str],
    path: str | Path,
    title: str = "Confusion matrix, row-normalised (rows: true class)",
) -> Path:
    """Row-normalised confusion matrix, classes sorted by support so big classes sit together.

    Sized to stay readable at 50+ classes: the figure grows with the class count (a fixed cell
    size), rows are labelled with their support, the colour scale is a square root (a 2% confusion
    is visible beside a 95% diagonal), and every cell holding at least
    :data:`CELL_LABEL_SHARE` of its row is annotated (its share up to 20 classes, beyond that its
    count, which stays short).
    """
    from matplotlib.colors import PowerNorm

    cm = np.asarray(cm, dtype=float)
    n = len(classes)
    support = cm.sum(axis=1)
    order = np.argsort(-support, kind="stable")
    cm = cm[np.ix_(order, order)]
    support = support[order]
    names = [str(classes[i]) for i in order]
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.where(cm.sum(axis=1, keepdims=True) > 0, cm / cm.sum(axis=1, keepdims=True), 0.0)
    side = max(6.0, min(0.3 * n + 3, 40.0))
    font = 10 if n <= 20 else 7 if n <= 60 else 5
    fig, ax = plt.subplots(figsize=(side + 1.5, side))
    im = ax.imshow(norm, cmap="Blues", norm=PowerNorm(0.5, vmin=0.0, vmax=1.0), interpolation="nearest")
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels(names, rotation=90, fontsize=font)
    ax.set_yticklabels([f"{name} ({int(s)})" for name, s in zip(names, support)], fontsize=font)
    # thin cell borders: a row or column can be followed by eye across 50+ cells
    ax.set_xticks(np.arange(-0.5, n, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, n, 1), minor=True)
    ax.grid(which="minor", color="0.85", linewidth=0.3)
    ax.tick_params(which="minor", length=0)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (test images)")
    ax.set_title(title)
    for i, j in zip(*np.nonzero(norm >= CELL_LABEL_SHARE)):
        ax.text(
            j,
            i,
            f"{norm[i, j]:.2f}" if n <= 20 else f"{int(cm[i, j])}",
            ha="center",
            va="center",
            fontsize=font - 2 if n <= 20 else font - 1,
            color="white" if norm[i, j] > 0.5 else "black",
        )
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    return save_figure(fig, path, dpi=120 if n > 30 else 100)


def plot_top_confusions(pairs: pd.DataFrame, path: str | Path, title: str = "Most frequent confusions (test)") -> Path:
    """Horizontal bars of the (true, predicted) pairs of :func:`~fashionops.evaluation.metrics.misclassified_pairs`
    (``true``, ``predicted``, ``count``, ``share_of_true``), the most frequent on top, each labelled
    ``true -> predicted`` with its count and share of the true class."""
    n = len(pairs)
    fig, ax = plt.subplots(figsize=(10, max(2.5, 0.34 * n + 1.2)))
    ax.set_title(title)
    if n == 0:
        ax.text(0.5, 0.5, "no misclassified images", ha="center", va="center")
        ax.set_axis_off()
        return save_figure(fig, path)
    counts = pairs["count"].to_numpy()
    ax.barh(range(n), counts, color="tab:red", alpha=0.8)
    ax.set_yticks(range(n))
    ax.set_yticklabels([f"{t} \u2192 {p}" for t, p in zip(pairs["true"], pairs["predicted"])], fontsize=9)
    ax.invert_yaxis()
    for y, (count, share) in enumerate(zip(counts, pairs["share_of_true"])):
        ax.text(count, y, f"  {int(count)} ({share:.1%} of the true class)", va="center", fontsize=8)
    ax.set_xlim(0, counts.max() * 1.35)
    ax.set_xlabel("misclassified images")
    ax.grid(axis="x", alpha=0.3)
    return save_figure(fig, path)


def plot_image_rows(
    rows: Sequence[tuple[str, Sequence[tuple[np.ndarray, str]]]],
    path: str | Path,
    title: str = "",
    empty: str = "",
    cols: int = 0,
) -> Path:
    """One row per ``(header, [(image, caption), ...])``, images upscaled to ~2 inches wide (the
    80x60 cache is unreadable at its own size), at least ``cols`` columns (a short row keeps the
    cell size); ``empty`` is written instead when there is no image (the file is written either way)."""
    n_images = max((len(cells) for _, cells in rows), default=0)
    n_cols = max(n_images, cols)
    if not rows or n_images == 0:
        fig, ax = plt.subplots(figsize=(8, 2))
        ax.text(0.5, 0.5, empty or "no images", ha="center", va="center", fontsize=12)
        ax.set_axis_off()
        fig.suptitle(title, fontsize=11)
        return save_figure(fig, path)
    fig = plt.figure(figsize=(max(2.2 * n_cols, 8.0), 3.3 * len(rows) + 0.5), layout="constrained")
    fig.suptitle(title, fontsize=12)
    subfigs = fig.subfigures(len(rows), 1, squeeze=False)[:, 0]
    for sub, (header, cells) in zip(subfigs, rows):
        sub.suptitle(header, fontsize=10, fontweight="bold", x=0.01, ha="left")
        axes = np.atleast_1d(sub.subplots(1, n_cols))
        for ax in axes:
            ax.set_axis_off()
        for ax, (image, caption) in zip(axes, cells):
            ax.imshow(image, interpolation="lanczos")
            ax.set_title(caption, fontsize=8)
    return save_figure(fig, path)


def plot_per_class_f1(report: pd.DataFrame, path: str | Path) -> Path:
    """Horizontal bar chart of per-class F1 (worst at the bottom), support in the labels."""
    df = report.sort_values("f1", ascending=True)
    n = len(df)
    fig, ax = plt.subplots(figsize=(8, max(3.0, 0.22 * n + 1)))
    labels = [f"{c} (n={int(s)})" for c, s in zip(df["class"], df["support"])]
    ax.barh(range(n), df["f1"].to_numpy(), color="tab:blue")
    ax.set_yticks(range(n))
    ax.set_yticklabels(labels, fontsize=8 if n <= 40 else 6)
    ax.set_xlim(0, 1)
    ax.set_xlabel("F1")
    ax.set_title("Per-class F1 (test)")
    ax.grid(axis="x", alpha=0.3)
    return save_figure(fig, path)


def plot_training_curves(history: pd.DataFrame | None, path: str | Path) -> Path:
    """Loss, accuracy and macro-F1 per epoch from ``history.csv``; a labelled blank if there is none."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    if history is None or history.empty or "epoch" not in history:
        for ax in axes:
            ax.text(0.5, 0.5, "no training history", ha="center", va="center")
            ax.set_axis_off()
        return save_figure(fig, path)
    x = history["epoch"]
    panels = [
        ("loss", ["train_loss", "val_loss"]),
        ("accuracy", ["train_acc", "val_acc"]),
        ("macro F1", ["train_macro_f1", "val_macro_f1"]),
    ]
    for ax, (title, cols) in zip(axes, panels):
        drawn = False
        for col in cols:
            if col in history and history[col].notna().any():
                ax.plot(x, history[col], marker="o", label=col)
                drawn = True
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend()
        else:
            ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes)
    return save_figure(fig, path)


def plot_retrieval(
    queries: list[tuple[np.ndarray, str]], results: list[list[tuple[np.ndarray, str]]], path: str | Path
) -> Path:
    """One row per query: the query image then its results, each captioned (label, distance)."""
    rows = max(1, len(queries))
    cols = 1 + max((len(r) for r in results), default=0)
    fig, axes = plt.subplots(rows, cols, figsize=(1.7 * cols, 2.3 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for i, (q_img, q_caption) in enumerate(queries):
        axes[i, 0].imshow(q_img)
        axes[i, 0].set_title("query\n" + q_caption, fontsize=7, color="tab:blue")
        for j, (img, caption) in enumerate(results[i]):
            axes[i, j + 1].imshow(img)
            axes[i, j + 1].set_title(caption, fontsize=7)
    return save_figure(fig, path)
