"""Error analysis a reviewer can act on: which images, which class pairs, which weak classes.

From one :class:`~fashionops.evaluation.scoring.Scored` set, the evaluate stage writes:

- ``predictions.csv`` (:func:`predictions_frame`): one row per scored image, ``id`` (the item id:
  the catalogue ``id``; ``<class folder>/<file name>`` for a folder-per-class catalogue),
  ``actual`` (true label), ``predicted``, ``confidence`` (the top probability, the predicted
  class's) and ``p_actual`` (the probability given to the true class);
- ``confusion_gallery.png`` (:func:`gallery_pairs` chooses, :func:`write_confusion_gallery`
  draws): for each of the :data:`GALLERY_PAIRS` most frequent (true, predicted) confusions (the
  order of ``misclassified_pairs.csv``), its :data:`GALLERY_PER_PAIR` most confident mistakes,
  each captioned with id, truth, prediction and confidence;
- the ``train_images`` column of ``per_class.csv``/``per_class.md`` (:func:`train_image_counts`)
  and the ``per_class.md`` section naming the classes below :data:`WEAK_F1`
  (:func:`weak_classes_markdown`) with their training images and top confusions.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fashionops.evaluation.metrics import confusion, misclassified_pairs
from fashionops.evaluation.scoring import Scored

log = logging.getLogger(__name__)

WEAK_F1 = 0.8  # per_class.md names the classes below this F1 (issue 12: the ones a reviewer acts on)
GALLERY_PAIRS = 8  # class pairs in confusion_gallery.png (rows), the most frequent confusions
GALLERY_PER_PAIR = 5  # mistakes shown per pair (columns), the most confident first
PREDICTION_COLUMNS = ["id", "actual", "predicted", "confidence", "p_actual"]


def predictions_frame(scored: Scored) -> pd.DataFrame:
    """``predictions.csv``: one row per scored image in ``y_true``'s order (:data:`PREDICTION_COLUMNS`).

    ``actual``/``predicted`` keep their names: DVC's confusion plot of the stage reads them.
    """
    classes = np.asarray(scored.classes, dtype=object)
    rows = np.arange(len(scored.y_true))
    return pd.DataFrame(
        {
            "id": scored.item_ids(),
            "actual": classes[scored.y_true],
            "predicted": classes[scored.y_pred],
            "confidence": scored.proba.max(axis=1).round(6),
            "p_actual": scored.proba[rows, scored.y_true].round(6),
        },
        columns=PREDICTION_COLUMNS,
    )


def train_image_counts(prepared_dir: str | Path, classes: Sequence[str], label_column: str) -> dict[str, int] | None:
    """Training images per class: the prepared index's train split, oversampled copies excluded.

    None when ``prepared_dir`` has no index or its label space is not the model's (another label
    column or class set: its counts would describe another training, so the column stays empty).
    """
    prepared = Path(prepared_dir)
    index_path, labels_path = prepared / "index.parquet", prepared / "labels.json"
    if not index_path.is_file():
        return None
    index = pd.read_parquet(index_path)
    if labels_path.is_file():
        labels = json.loads(labels_path.read_text())
        column, known = labels.get("column"), set(labels.get("classes") or [])
    else:
        column, known = label_column, set(index["label"].astype(str))
    if column != label_column or known != set(classes):
        log.info("%s holds another label space than the model's: no train_images counts", prepared)
        return None
    train = index[index["split"] == "train"]
    if "is_copy" in train:
        train = train[~train["is_copy"].astype(bool)]
    counts = train["label"].astype(str).value_counts()
    return {c: int(counts.get(c, 0)) for c in classes}


def with_train_images(report: pd.DataFrame, counts: dict[str, int] | None) -> pd.DataFrame:
    """``report`` (:func:`~fashionops.evaluation.metrics.per_class_report`) with a ``train_images``
    column: the count per class, empty (NA) when ``counts`` is None."""
    out = report.copy()
    values = [None if counts is None else counts.get(str(c)) for c in out["class"]]
    out["train_images"] = pd.array(values, dtype="Int64")
    return out


@dataclass(frozen=True)
class GalleryPair:
    """One row of the confusion gallery: a (true, predicted) confusion and its chosen mistakes."""

    true: int  # class indexes
    predicted: int
    count: int  # images of ``true`` predicted as ``predicted``
    share_of_true: float
    examples: list[int]  # indexes into the scored set, the most confident mistakes first


def gallery_pairs(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    proba: np.ndarray,
    classes: Sequence[str],
    n_pairs: int = GALLERY_PAIRS,
    per_pair: int = GALLERY_PER_PAIR,
) -> list[GalleryPair]:
    """The ``n_pairs`` most frequent confusions, in :func:`misclassified_pairs`' order (the top of
    ``misclassified_pairs.csv``), each with its ``per_pair`` most confident mistakes (top
    probability, descending; ties: scored order). Empty when nothing is misclassified."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    confidence = np.asarray(proba, dtype=np.float64).max(axis=1)
    pos = {str(c): i for i, c in enumerate(classes)}
    out = []
    for row in misclassified_pairs(y_true, y_pred, classes, n_pairs).itertuples(index=False):
        t, p = pos[str(row.true)], pos[str(row.predicted)]
        hits = np.flatnonzero((y_true == t) & (y_pred == p))
        ranked = hits[np.argsort(-confidence[hits], kind="stable")][:per_pair]
        out.append(GalleryPair(t, p, int(row.count), float(row.share_of_true), [int(i) for i in ranked]))
    return out


def write_confusion_gallery(
    scored: Scored, path: str | Path, n_pairs: int = GALLERY_PAIRS, per_pair: int = GALLERY_PER_PAIR
) -> list[GalleryPair]:
    """``confusion_gallery.png`` of :func:`gallery_pairs`; returns the pairs it shows. Written (with a
    line saying so) also when no image is misclassified or the pixels are not at hand."""
    from fashionops.evaluation.plots import plot_image_rows

    pairs = gallery_pairs(scored.y_true, scored.y_pred, scored.proba, scored.classes, n_pairs, per_pair)
    ids, classes = scored.item_ids(), scored.classes
    rows = []
    for rank, pair in enumerate(pairs, 1):
        header = (
            f"#{rank}  {classes[pair.true]} \u2192 {classes[pair.predicted]}: "
            f"{pair.count} image{'s' if pair.count != 1 else ''} "
            f"({pair.share_of_true:.1%} of {classes[pair.true]})"
        )
        cells = []
        for i in pair.examples:
            image = scored.image(i)
            if image is None:
                continue
            caption = (
                f"id {ids[i]}\ntrue: {classes[pair.true]}\n"
                f"pred: {classes[pair.predicted]}\nconfidence {scored.proba[i].max():.2f}"
            )
            cells.append((image, caption))
        rows.append((header, cells))
    if not pairs:
        note = "no misclassified images"
    elif scored.image_of is None:
        note, rows = "images not available for this scored set", []
    else:
        note = ""
    title = f"Most frequent confusions, most confident mistakes first ({scored.source})"
    plot_image_rows(rows, path, title=title, empty=note, cols=per_pair)
    return pairs


def weak_classes(
    report: pd.DataFrame, cm: np.ndarray, classes: Sequence[str], threshold: float = WEAK_F1
) -> pd.DataFrame:
    """The classes of ``report`` below ``threshold`` F1, worst first, with where their errors go.

    ``predicted_as``: the class its images are most often wrongly given (recall lost);
    ``mistaken_for_it``: the class whose images are most often wrongly given it (precision lost);
    each ``"<class> (<count>)"``, empty when there is none.
    """
    pos = {str(c): i for i, c in enumerate(classes)}
    off = np.asarray(cm, dtype=np.int64).copy()
    np.fill_diagonal(off, 0)

    def top(counts: np.ndarray) -> str:
        j = int(counts.argmax())
        return f"{classes[j]} ({int(counts[j])})" if counts[j] > 0 else ""

    weak = report[report["f1"] < threshold].sort_values(["f1", "class"]).reset_index(drop=True)
    weak = weak.assign(
        predicted_as=[top(off[pos[str(c)], :]) for c in weak["class"]],
        mistaken_for_it=[top(off[:, pos[str(c)]]) for c in weak["class"]],
    )
    return weak


def weak_classes_markdown(
    report: pd.DataFrame, y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str], threshold: float = WEAK_F1
) -> str:
    """The ``per_class.md`` section naming the classes below ``threshold`` F1 (:func:`weak_classes`)."""
    weak = weak_classes(report, confusion(y_true, y_pred, len(classes)), classes, threshold)
    lines = ["", f"## Classes below F1 {threshold:g} ({len(weak)} of {len(report)})", ""]
    if weak.empty:
        return "\n".join([*lines, f"None: every class reaches F1 {threshold:g}.", ""])
    lines += [
        "| class | f1 | precision | recall | support | train images "
        "| most often predicted as | most often mistaken for it |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for row in weak.itertuples(index=False):
        train = getattr(row, "train_images", None)
        train_text = "" if train is None or pd.isna(train) else str(int(train))
        lines.append(
            f"| {row[0]} | {row.f1:.3f} | {row.precision:.3f} | {row.recall:.3f} | {int(row.support)} | "
            f"{train_text} | {row.predicted_as} | {row.mistaken_for_it} |"
        )
    return "\n".join(lines) + "\n"
