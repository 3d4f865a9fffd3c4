"""The index directory on disk: file names, the atomic writer and the reader.

Layout of ``paths.index_dir`` (written to a temp sibling, then renamed into place):
``index.ann`` (the ANN index, ids 0..n-1; the file name is the backend's), ``items.parquet``
(``annoy_idx`` -> catalogue ``id`` and labels), ``embeddings.npy`` (float32, L2-normalised, the
embedder's space), ``index_meta.json``, ``class_probs.npy`` (the classifier's probabilities per
item, when re-ranking) and, when ``index.dim`` asks for one, ``projection.npz`` (rank-``dim``
SVD fitted on the catalogue; queries go through it inside ``IndexSearcher``).

``index_meta.json`` names its backend under ``backend`` (``index.ann`` for Annoy, ``index.faiss`` for
HNSW); without the key (index dirs built before the key existed) it is Annoy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fashionops.atomic import staged_dir
from fashionops.errors import DataError, FashionOpsError
from fashionops.search.backends import DEFAULT_BACKEND, AnnBackend, AnnIndex, get_backend
from fashionops.search.vectors import Projection

RESULT_COLUMNS = ["id", "productDisplayName", "masterCategory", "subCategory", "articleType"]
# gender, baseColour and year: what an API item shows (an index built before they were stored lacks them)
ITEM_COLUMNS = [*RESULT_COLUMNS, "gender", "baseColour", "year", "sha256"]
META_FILE = "index_meta.json"
ITEMS_FILE = "items.parquet"
EMBEDDINGS_FILE = "embeddings.npy"
PROJECTION_FILE = "projection.npz"
CLASS_PROBS_FILE = "class_probs.npy"  # the classifier's probabilities per item (re-ranking by id)


def backend_of(meta: dict[str, Any]) -> AnnBackend:
    """The backend an index was built with (``meta["backend"]``, Annoy when absent)."""
    return get_backend(str(meta.get("backend") or DEFAULT_BACKEND))


def index_files(index_dir: str | Path) -> list[Path]:
    """The files a searchable index dir must hold: the ANN index, the items, the metadata."""
    index_dir = Path(index_dir)
    meta_path = index_dir / META_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    return [index_dir / backend_of(meta).index_file, index_dir / ITEMS_FILE, meta_path]


def json_default(obj: Any) -> Any:
    """``json.dumps`` fallback: numpy scalars and arrays as Python values, anything else as text."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def write_index_dir(
    out_dir: str | Path,
    vectors: np.ndarray,
    index: AnnIndex,
    items: pd.DataFrame,
    meta: dict[str, Any],
    projection: Projection | None,
    class_probs: np.ndarray | None = None,
) -> Path:
    """Save everything into a temp sibling dir, then swap it in: never a partial index dir.

    ``meta`` is written as ``index_meta.json``; its ``backend`` (default Annoy) must be the one
    that built ``index``.
    """
    backend = backend_of(meta)
    if index.backend_name != backend.name:
        raise FashionOpsError(f"index_meta.json names backend {backend.name!r} but the index is {index.backend_name!r}")
    out_dir = Path(out_dir)
    with staged_dir(out_dir) as tmp:
        index.save(tmp / backend.index_file)
        # reindex: a column the caller's items lack (an older items frame) is stored empty
        items.reindex(columns=["annoy_idx", *ITEM_COLUMNS]).to_parquet(tmp / ITEMS_FILE, index=False)
        np.save(tmp / EMBEDDINGS_FILE, vectors.astype(np.float32))
        if projection is not None:
            projection.save(tmp / PROJECTION_FILE)
        if class_probs is not None:
            np.save(tmp / CLASS_PROBS_FILE, class_probs.astype(np.float32))
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=json_default))
    return out_dir


@dataclass
class StoredIndex:
    """What an index dir holds, loaded: the ANN index, items in row order, metadata and extras."""

    index: AnnIndex
    items: pd.DataFrame
    meta: dict[str, Any]
    projection: Projection | None
    class_probs: np.ndarray | None  # memory-mapped (n, C), or None


def read_index_dir(index_dir: str | Path) -> StoredIndex:
    """Load an index dir, checking that its parts agree (item counts of index, items and probabilities)."""
    index_dir = Path(index_dir)
    for path in index_files(index_dir):
        if not path.is_file():
            raise FashionOpsError(f"{path} not found; run `fashionops index`")
    meta = json.loads((index_dir / META_FILE).read_text())
    items = pd.read_parquet(index_dir / ITEMS_FILE).sort_values("annoy_idx").reset_index(drop=True)
    projection = Projection.load(index_dir / PROJECTION_FILE) if meta.get("projection") else None
    probs_path = index_dir / CLASS_PROBS_FILE
    class_probs = np.load(probs_path, mmap_mode="r") if probs_path.is_file() else None
    if class_probs is not None and len(class_probs) != len(items):
        raise DataError(f"{probs_path}: {len(class_probs)} rows but items.parquet has {len(items)}")
    backend = backend_of(meta)
    index = backend.load(index_dir / backend.index_file, int(meta["index_dim"]), meta["metric"])
    if index.n_items != len(items):
        raise DataError(f"{index_dir}: index has {index.n_items} items but items.parquet has {len(items)}")
    return StoredIndex(index, items, meta, projection, class_probs)
