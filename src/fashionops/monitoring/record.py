"""``record_observations``: what a model saw, appended to the observation log (``monitor.store``).

Batch scoring calls it per batch, the server's recording thread per request
(:mod:`fashionops.serving.recording`); the drift reference is built with the same facts and
projection (:mod:`fashionops.monitoring.reference`), so all three are comparable.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone

import numpy as np

from fashionops.config_operations import MonitorConfig
from fashionops.monitoring.facts import image_facts
from fashionops.monitoring.projection import project
from fashionops.monitoring.store import append_rows


def utc_now() -> str:
    """The store's timestamp text: UTC, ISO 8601 with microseconds (sorts as text)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def record_observations(
    cfg: MonitorConfig,
    *,
    images: Sequence[np.ndarray],
    probabilities: np.ndarray | None,
    classes: list[str],
    embeddings: np.ndarray | None,
    source: str,
    model_version: str | None,
    item_ids: Sequence[str] | None = None,
) -> int:
    """Append one row per image to ``cfg.store``: predicted class and its probability (from
    ``probabilities`` over ``classes``; NULL when None), the ``cfg.projection_dim`` projection of the
    embedding (NULL when None) and the image facts. One transaction; returns the rows appended."""
    n = len(images)
    if probabilities is not None and len(probabilities) != n:
        raise ValueError(f"{len(probabilities)} probability rows for {n} images")
    if embeddings is not None and len(embeddings) != n:
        raise ValueError(f"{len(embeddings)} embeddings for {n} images")
    if item_ids is not None and len(item_ids) != n:
        raise ValueError(f"{len(item_ids)} item ids for {n} images")
    if n == 0:
        return 0
    predicted: list[str | None] = [None] * n
    confidence: list[float | None] = [None] * n
    if probabilities is not None:
        probs = np.asarray(probabilities, dtype=np.float64)
        best = probs.argmax(axis=1)
        predicted = [classes[int(i)] for i in best]
        confidence = [float(probs[row, i]) for row, i in enumerate(best)]
    projections: list[bytes | None] = [None] * n
    if embeddings is not None:
        projections = [row.astype(np.float32).tobytes() for row in project(embeddings, cfg.projection_dim)]
    ts = utc_now()
    rows = []
    for i, image in enumerate(images):
        facts = image_facts(image)
        item = None if item_ids is None else str(item_ids[i])
        rows.append((ts, source, model_version, item, predicted[i], confidence[i], *facts, projections[i]))
    return append_rows(cfg.store, rows)
