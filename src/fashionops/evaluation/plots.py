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
    title: str = "Normalised confusion matrix (rows: true class)",
) -> Path:
    """Row-normalised confusion matrix, classes sorted by support so big classes sit together.

    Sized to stay readable at 50+ classes: the figure grows with the class count and the tick
    font shrinks; cell values are printed only when there are few classes.
    """
    cm = np.asarray(cm, dtype=float)
    n = len(classes)
    support = cm.sum(axis=1)
    order = np.argsort(-support, kind="stable")
    cm = cm[np.ix_(order, order)]
    names = [str(classes[i]) for i in order]
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.where(cm.sum(axis=1, keepdims=True) > 0, cm / cm.sum(axis=1, keepdims=True), 0.0)
    side = max(6.0, min(0.28 * n + 3, 40.0))
    font = 10 if n <= 20 else max(4, int(10 - (n - 20) / 10))
    fig, ax = plt.subplots(figsize=(side, side))
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels(names, rotation=90, fontsize=font)
    ax.set_yticklabels(names, fontsize=font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if norm[i, j] >= 0.01:
                    ax.text(
                        j,
                        i,
                        f"{norm[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=font - 2,
                        color="white" if norm[i, j] > 0.5 else "black",
                    )
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return save_figure(fig, path, dpi=120 if n > 30 else 100)


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
