"""The index's items: every catalogue row with an image, and those images encoded.

Row order is the ANN id (``annoy_idx``): items are sorted by catalogue ``id``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from fashionops.errors import DataError
from fashionops.inference.predictor import Encoded, Predictor
from fashionops.search.store import ITEM_COLUMNS, RESULT_COLUMNS


def catalogue_items(raw_dir: str | Path) -> pd.DataFrame:
    """Every catalogue row with an image, sorted by ``id`` (the index's row order)."""
    from fashionops.data.catalogue import load_catalogue

    cat = load_catalogue(raw_dir)
    if cat.empty:
        raise DataError(f"{raw_dir}: the catalogue is empty")
    cat = cat.sort_values("id", kind="stable").reset_index(drop=True)
    for col in RESULT_COLUMNS:
        if col not in cat:
            cat[col] = None
    return cat


def embed_catalogue(
    cat: pd.DataFrame, predictor: Predictor, batch_size: int = 256, flip_tta: bool = False, with_probs: bool = False
) -> tuple[Encoded, pd.DataFrame]:
    """Decode every catalogue image at the model's input size and encode it (:meth:`Predictor.encode`).

    Returns ``(encoded, items)`` where ``items`` has ``annoy_idx`` and ``sha256`` of the file bytes.
    Unreadable images raise ``DataError`` naming the file.
    """
    from fashionops.data.imaging import load_rgb

    chunks: list[Encoded] = []
    shas: list[str] = []
    batch: list[np.ndarray] = []

    def flush() -> None:
        chunks.append(predictor.encode(np.stack(batch), batch_size, flip_tta=flip_tta, with_probs=with_probs))
        batch.clear()

    for file in cat["file"]:
        data = Path(file).read_bytes()
        shas.append(hashlib.sha256(data).hexdigest())
        # resized at once (one image at a time in memory at its decoded size)
        batch.append(predictor.fit(load_rgb(data, name=str(file)))[0])
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    items = cat.copy()
    items["sha256"] = shas
    items.insert(0, "annoy_idx", np.arange(len(items), dtype=np.int64))
    items = items[["annoy_idx", *ITEM_COLUMNS, "file"]]
    probs = [c.class_probs for c in chunks if c.class_probs is not None]
    encoded = Encoded(
        np.concatenate([c.embeddings for c in chunks], axis=0),
        np.concatenate(probs, axis=0) if len(probs) == len(chunks) else None,
    )
    return encoded, items
