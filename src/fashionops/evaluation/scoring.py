"""Scoring a classifier on a labelled set: the prepared test split or a labelled catalogue.

The model is either the trained model directory (through the :class:`Predictor`) or any
logged/registered classifier pyfunc (``--model-uri``); both give probabilities over the
model's ``classes``, and images of classes the model does not know are excluded and counted.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fashionops.config import TrackingConfig
from fashionops.errors import DataError, FashionOpsError
from fashionops.progress import Progress

log = logging.getLogger(__name__)


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
class ScoringModel:
    """A classifier as scoring sees it: its label space and a probability function."""

    classes: list[str]
    label_column: str
    predict_proba: Callable[[Any], np.ndarray]  # list of HxWx3 uint8 images or NHWC batch -> (N, C)


def local_model(model_dir: str | Path, batch_size: int) -> ScoringModel:
    from fashionops.inference.predictor import Predictor

    predictor = Predictor.from_dir(model_dir).require_classifier(str(model_dir))

    def predict(images: Any) -> np.ndarray:
        # ~10 slices of whole batches (the same batches as one call): a progress line each
        size = batch_size * max(1, -(-len(images) // (batch_size * 10)))
        out = []
        with Progress(len(images), "scored", unit="images", logger=log) as progress:
            for start in range(0, len(images), size):
                out.append(predictor.predict_proba(images[start : start + size], batch_size).astype(np.float64))
                progress.update(len(out[-1]))
        return np.concatenate(out) if out else np.zeros((0, len(predictor.classes)))

    return ScoringModel(predictor.classes, predictor.spec.label_column, predict)


def _png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG")  # lossless
    return buf.getvalue()


def pyfunc_model(uri: str, tracking: TrackingConfig, batch_size: int) -> ScoringModel:
    """A registered/logged classifier pyfunc; classes and label column from its metadata."""
    import mlflow

    from fashionops.registry.pyfunc import images_frame
    from fashionops.tracking import configure

    configure(tracking)
    try:
        model = mlflow.pyfunc.load_model(uri)
    except Exception as exc:
        raise FashionOpsError(f"cannot load model {uri!r}: {str(exc)[:300]}") from exc
    meta = (model.metadata.metadata or {}) if model.metadata else {}
    classes = meta.get("classes")
    if not classes:
        raise FashionOpsError(f"model {uri!r} has no 'classes' in its metadata; not a fashionops classifier")

    def predict(images: Any) -> np.ndarray:
        out = []
        for start in range(0, len(images), batch_size):
            # encoded PNG bytes: exactly the model's input schema (binary), lossless
            cells = [img if isinstance(img, bytes) else _png_bytes(img) for img in images[start : start + batch_size]]
            res = model.predict(images_frame(cells))
            out.append(np.asarray([np.asarray(p, dtype=np.float64) for p in res["probabilities"]]))
        return np.concatenate(out)

    return ScoringModel(list(classes), meta.get("label_column") or "articleType", predict)


def _encode_labels(labels: Sequence[str], classes: list[str]) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """(kept mask, class indexes of kept rows, unknown class -> count)."""
    pos = {c: i for i, c in enumerate(classes)}
    names = pd.Series(list(labels), dtype=object).astype(str)
    known = names.map(pos)
    mask = known.notna().to_numpy()
    excluded = names[~mask].value_counts().to_dict()
    return mask, known[mask].astype(np.int64).to_numpy(), {str(k): int(v) for k, v in excluded.items()}


def score_test_split(model: ScoringModel, prepared_dir: str | Path) -> Scored:
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


def score_catalogue(model: ScoringModel, data_dir: str | Path) -> Scored:
    """Score a labelled catalogue (Kaggle or folder-per-class layout) with the model's label column."""
    from fashionops.data.catalogue import load_catalogue
    from fashionops.data.imaging import load_rgb

    cat = load_catalogue(data_dir)
    if model.label_column not in cat:
        raise DataError(f"{data_dir}: no {model.label_column!r} column, the model's label column")
    cat = cat[cat[model.label_column].notna()]
    mask, y_true, excluded = _encode_labels(cat[model.label_column], model.classes)
    files = cat["file"].to_numpy()[mask]
    if files.size == 0:
        raise DataError(f"{data_dir}: no image of a class the model knows (found: {excluded})")
    images = [load_rgb(f, name=str(f)) for f in files]  # resized by the model, as the cache was made
    return Scored(model.predict_proba(images), y_true, model.classes, model.label_column, str(data_dir), excluded)
