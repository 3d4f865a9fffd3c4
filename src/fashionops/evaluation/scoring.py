"""Scoring a classifier on a labelled set: the prepared test split or a labelled catalogue.

The model is either the trained model directory (through the :class:`Predictor`) or any
logged/registered classifier pyfunc (``--model-uri``); both give probabilities over the
model's ``classes``, and images of classes the model does not know are excluded and counted.

A multi-attribute model (``spec.attributes``, the local model) is scored on every head in one
pass: :attr:`Scored.heads` holds one :class:`Scored` per extra attribute over the images whose
value of it the model knows (missing values and classes the head lacks are excluded and counted).

Each scored image keeps its item id (:attr:`Scored.ids`) and a way back to its pixels
(:meth:`Scored.image`), in ``y_true``'s order: ``predictions.csv`` and the confusion gallery
(:mod:`fashionops.evaluation.error_analysis`) name and show the images themselves.
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
    heads: dict[str, Scored] = field(default_factory=dict)  # multi-attribute: extra attribute -> its scores
    majority: int | None = None  # the train split's most frequent class (a baseline), when known
    # per image, in y_true's order: the item id (test split: index.parquet's ``id``; a catalogue: its
    # ``id``, or ``<class folder>/<file name>`` in a folder-per-class catalogue, whose ids are row numbers)
    ids: np.ndarray | None = None
    image_of: Callable[[int], np.ndarray] | None = None  # i -> the i-th image, HxWx3 uint8 (gallery)

    @property
    def y_pred(self) -> np.ndarray:
        return self.proba.argmax(axis=1)

    def item_ids(self) -> np.ndarray:
        """The item id of every image (its position when the ids are unknown)."""
        return self.ids if self.ids is not None else np.arange(len(self.y_true))

    def image(self, i: int) -> np.ndarray | None:
        """The ``i``-th scored image (HxWx3 uint8), None when the pixels are not at hand."""
        return None if self.image_of is None else np.asarray(self.image_of(i), dtype=np.uint8)


@dataclass
class ScoringModel:
    """A classifier as scoring sees it: its label space and a probability function."""

    classes: list[str]
    label_column: str
    predict_proba: Callable[[Any], np.ndarray]  # list of HxWx3 uint8 images or NHWC batch -> (N, C)
    # multi-attribute models: extra attribute -> classes, and images -> {attribute: (N, C_a)} for
    # every head, the primary included (one pass)
    attributes: dict[str, list[str]] = field(default_factory=dict)
    predict_attributes: Callable[[Any], dict[str, np.ndarray]] | None = None

    def predict_all(self, images: Any) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(primary probabilities, {extra attribute: probabilities}) in one pass where it can."""
        if not self.attributes or self.predict_attributes is None:
            return self.predict_proba(images), {}
        probs = self.predict_attributes(images)
        return probs[self.label_column], {a: probs[a] for a in self.attributes if a in probs}


def local_model(model_dir: str | Path, batch_size: int) -> ScoringModel:
    from fashionops.inference.predictor import Predictor

    eager = Predictor.from_dir(model_dir).require_classifier(str(model_dir))
    # the frozen NHWC trace the index encodes with (checked against the eager module; the eager
    # module on any doubt): 218 images/s scoring the val split on the 2-core machine, eager 83
    predictor = eager.compiled(["forward"], channels_last=True)

    def predict_heads(images: Any) -> dict[str, np.ndarray]:
        # ~10 slices of whole batches (the same batches as one call): a progress line each
        size = batch_size * max(1, -(-len(images) // (batch_size * 10)))
        parts: dict[str, list[np.ndarray]] = {}
        with Progress(len(images), "scored", unit="images", logger=log) as progress:
            for start in range(0, len(images), size):
                chunk = images[start : start + size]
                probs = (
                    predictor.predict_attribute_proba(chunk, batch_size)
                    if predictor.spec.attributes
                    else {predictor.spec.label_column: predictor.predict_proba(chunk, batch_size)}
                )
                for name, p in probs.items():
                    parts.setdefault(name, []).append(p.astype(np.float64))
                progress.update(len(chunk))
        if not parts:
            return {predictor.spec.label_column: np.zeros((0, len(predictor.classes)))}
        return {name: np.concatenate(p) for name, p in parts.items()}

    def predict(images: Any) -> np.ndarray:
        return predict_heads(images)[predictor.spec.label_column]

    return ScoringModel(
        predictor.classes,
        predictor.spec.label_column,
        predict,
        attributes={a: list(c) for a, c in predictor.spec.attributes.items()},
        predict_attributes=predict_heads if predictor.spec.attributes else None,
    )


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


def _majority(labels: Sequence[str], classes: list[str]) -> int | None:
    """Index of the most frequent of ``labels`` among ``classes`` (ties: the first class), or None."""
    mask, idx, _ = _encode_labels(labels, classes)
    return int(np.bincount(idx, minlength=len(classes)).argmax()) if mask.any() else None


def _score_heads(
    model: ScoringModel,
    rows: pd.DataFrame,
    probs: dict[str, np.ndarray],
    source: str,
    train: pd.DataFrame | None = None,
) -> dict[str, Scored]:
    """One :class:`Scored` per extra attribute over ``rows`` (aligned with ``probs``): rows whose
    value the head does not know (missing: ``"(missing)"``) are excluded and counted."""
    from fashionops.data.attributes import attribute_values

    heads: dict[str, Scored] = {}
    for name, classes in model.attributes.items():
        if name not in rows.columns or name not in probs:
            log.warning("%s: no %r values: the %s head is not evaluated", source, name, name)
            continue
        values = attribute_values(rows[name])
        mask, y_true, excluded = _encode_labels(values, classes)
        excluded = {(k or "(missing)"): v for k, v in excluded.items()}
        if not mask.any():
            log.warning("%s: no image with a %s value the model knows: the head is not evaluated", source, name)
            continue
        majority = _majority(attribute_values(train[name]), classes) if train is not None and name in train else None
        heads[name] = Scored(probs[name][mask], y_true, list(classes), name, source, excluded, majority=majority)
    return heads


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
    proba, head_probs = model.predict_all(np.ascontiguousarray(images[np.sort(rows)]))
    order = np.argsort(np.argsort(rows))  # images were read in sorted row order
    source = f"{prepared_dir} (test split)"
    scored = Scored(proba[order], y_true, model.classes, model.label_column, source, excluded)
    scored.ids = test["id"].to_numpy()[mask]
    scored.image_of = lambda i: np.asarray(images[rows[i]])  # the memory map: read on demand
    if model.attributes:
        train = index[(index["split"] == "train") & ~index["is_copy"].astype(bool)]
        scored.majority = _majority(train["label"], model.classes)
        probs = {name: p[order] for name, p in head_probs.items()}
        scored.heads = _score_heads(model, test[mask].reset_index(drop=True), probs, source, train)
    return scored


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
    proba, head_probs = model.predict_all(images)
    scored = Scored(proba, y_true, model.classes, model.label_column, str(data_dir), excluded)
    scored.ids = _catalogue_ids(Path(data_dir), cat[mask])
    # decoded again on demand: the gallery shows a few dozen, and full-size photos are large to keep
    scored.image_of = lambda i: load_rgb(files[i], name=str(files[i]))
    if model.attributes:
        scored.heads = _score_heads(model, cat[mask].reset_index(drop=True), head_probs, str(data_dir))
    return scored


def _catalogue_ids(data_dir: Path, rows: pd.DataFrame) -> np.ndarray:
    """The item id of each catalogue row: its ``id`` (Kaggle layout: the image is ``images/{id}.jpg``),
    or ``<class folder>/<file name>`` for a folder-per-class catalogue (ids there are row numbers)."""
    if (data_dir / "styles.csv").is_file():
        return rows["id"].to_numpy()
    # <class folder>/<file name>: the path under the catalogue (``file`` is resolved: links followed)
    return np.asarray([f"{Path(f).parent.name}/{Path(f).name}" for f in rows["file"]], dtype=object)
