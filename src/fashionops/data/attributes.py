"""Extra attributes of a multi-attribute classifier (``prepare.labels``): encode and count them.

The primary label (``prepare.label``) drives filtering, the split and balancing exactly as in
single-label runs; the extra attributes ride along on the same rows. Per extra attribute:

* classes = its values with at least :data:`MIN_TRAIN_IMAGES` images in the train split,
  sorted (the order of the head's outputs);
* ``<attribute>_idx`` = the class number, or :data:`IGNORE_INDEX` (``-1``) where the value is
  missing, empty or too rare: that head's loss and metrics skip the row, the others keep it.

``index.parquet`` gets two columns per extra attribute: ``<attribute>`` (the raw value, ``""``
when missing) and ``<attribute>_idx``; ``labels.json`` gets ``attributes: {attribute: classes}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from fashionops.errors import DataError

IGNORE_INDEX = -1
# A head needs a handful of examples per class to learn it and to be measured on val/test
# (~10% each): rarer values (e.g. baseColour "Fluorescent Green") are ignored for that head.
MIN_TRAIN_IMAGES = 20
SPLITS = ("train", "val", "test")


def attribute_values(values: pd.Series) -> pd.Series:
    """Values as stripped strings; missing ones (NA, NaN, blank) as ``""``."""
    text = values.astype("string").str.strip()
    return text.fillna("").astype(str)


def attribute_classes(
    values: pd.Series, split: pd.Series, min_train: int = MIN_TRAIN_IMAGES
) -> tuple[list[str], dict[str, int]]:
    """(sorted classes with >= ``min_train`` train images, {too-rare value: its train count})."""
    counts = values[(split == "train").to_numpy() & (values != "").to_numpy()].value_counts()
    seen = sorted(set(values[values != ""]))
    kept = sorted(str(v) for v, c in counts.items() if c >= min_train)
    rare = {str(v): int(counts.get(v, 0)) for v in seen if v not in set(kept)}
    return kept, rare


def encode(values: pd.Series, classes: Sequence[str]) -> np.ndarray:
    """Class number per row, :data:`IGNORE_INDEX` for values not in ``classes`` (missing or rare)."""
    lookup = {name: i for i, name in enumerate(classes)}
    return np.asarray([lookup.get(v, IGNORE_INDEX) for v in values], dtype=np.int64)


def encode_attributes(
    frame: pd.DataFrame, attributes: Sequence[str], source: str, min_train: int = MIN_TRAIN_IMAGES
) -> tuple[dict[str, pd.Series], dict[str, list[str]], dict[str, dict[str, int]]]:
    """Encode the extra ``attributes`` columns of ``frame`` (which has a ``split`` column).

    Returns (index columns to add: ``<a>`` and ``<a>_idx`` per attribute, {attribute: classes},
    {attribute: {too-rare value: train count}}). Raises ``DataError`` naming ``source`` when an
    attribute is not a column of the catalogue or has no class with ``min_train`` train images.
    """
    columns: dict[str, pd.Series] = {}
    classes: dict[str, list[str]] = {}
    rare: dict[str, dict[str, int]] = {}
    for attribute in attributes:
        if attribute not in frame.columns:
            raise DataError(f"{source}: prepare.labels: the catalogue has no {attribute!r} column")
        values = attribute_values(frame[attribute]).reset_index(drop=True)
        kept, dropped = attribute_classes(values, frame["split"].reset_index(drop=True), min_train)
        if not kept:
            raise DataError(
                f"{source}: prepare.labels: no {attribute} value has {min_train} train images (nothing to learn)"
            )
        classes[attribute] = kept
        rare[attribute] = dropped
        columns[attribute] = values
        columns[f"{attribute}_idx"] = pd.Series(encode(values, kept), dtype=np.int64)
    return columns, classes, rare


def attribute_summary(
    index: pd.DataFrame, classes: dict[str, list[str]], rare: dict[str, dict[str, int]]
) -> dict[str, Any]:
    """Per extra attribute: classes, per-split class counts, rows ignored per split, the rare values."""
    summary: dict[str, Any] = {}
    for attribute, names in classes.items():
        idx = index[f"{attribute}_idx"].to_numpy()
        split = index["split"].to_numpy()
        summary[attribute] = {
            "n_classes": len(names),
            "classes": list(names),
            "class_counts": {
                s: {name: int(((split == s) & (idx == i)).sum()) for i, name in enumerate(names)} for s in SPLITS
            },
            "ignored": {s: int(((split == s) & (idx == IGNORE_INDEX)).sum()) for s in SPLITS},
            "rare_values": dict(sorted(rare.get(attribute, {}).items())),
            "min_train_images": MIN_TRAIN_IMAGES,
        }
    return summary
