"""``IndexSearcher``: a loaded index dir answering visual-search queries.

Query path (the CLI, the pyfunc model and the server alike): images encoded as the items were
(:meth:`IndexSearcher.encode`), projected into the index's space, the ``candidates`` nearest
items from the ANN index (``search_k`` scaled to that count), re-ranked by category
(:func:`~fashionops.search.rerank.rerank_by_category`), the top k as catalogue records.
Catalogue items searched by id use their stored embedding and class probabilities: what an
uploaded photo of them gets.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fashionops.errors import DataError
from fashionops.inference.predictor import Encoded, Predictor
from fashionops.search.backends import AnnIndex, Neighbours
from fashionops.search.rerank import DUPLICATE_EPS, rerank_by_category
from fashionops.search.store import RESULT_COLUMNS, read_index_dir
from fashionops.search.vectors import Projection, check_vectors

Lookup = Callable[[int, int], Neighbours]  # (n, search_k) -> the n nearest (ids, distances)


class IndexSearcher:
    """A loaded index: embeddings in, catalogue items out (projection, id map and re-ranking here).

    With ``rerank`` in the index metadata, the ``candidates`` nearest items are re-ordered by
    :func:`rerank_by_category`; catalogue items searched by id use their stored embedding and
    class probabilities, exactly as an uploaded photo of them would.
    """

    def __init__(
        self,
        index: AnnIndex,
        items: pd.DataFrame,
        meta: dict[str, Any],
        projection: Projection | None,
        index_dir: Path | None = None,
        class_probs: np.ndarray | None = None,
    ):
        self.index = index
        self.items = items.reset_index(drop=True)
        self.meta = meta
        self.projection = projection
        self.index_dir = index_dir
        self.dim: int = int(meta["dim"])
        self.metric: str = meta["metric"]
        self.search_k: int = int(meta.get("search_k", -1))
        self.recall_k: int = int(meta.get("recall_k", 10))
        self.flip_tta: bool = bool(meta.get("flip_tta", False))
        self.rerank: dict[str, Any] | None = meta.get("rerank") or None
        self.class_probs = class_probs
        self._row_of_id = {int(i): r for r, i in enumerate(self.items["id"])}
        self._records = self.items[RESULT_COLUMNS].to_dict("records")
        self._n_classes = 0
        self._item_class = np.zeros(0, dtype=np.int64)
        if self.rerank:
            column = self.rerank["label_column"]
            if column not in self.items:
                raise DataError(f"index_meta.json: rerank.label_column {column!r} is not an item column")
            labels = self.items[column].astype(object).to_numpy()
            classes = self.rerank.get("classes") or sorted({str(v) for v in labels if v is not None})
            position = {c: i for i, c in enumerate(classes)}
            self._n_classes = len(classes)
            self._item_class = np.array([position.get(v, -1) for v in labels], dtype=np.int64)

    @classmethod
    def load(cls, index_dir: str | Path) -> IndexSearcher:
        """Open an index dir (see :mod:`fashionops.search.store`); an Annoy index is memory-mapped."""
        stored = read_index_dir(index_dir)
        return cls(stored.index, stored.items, stored.meta, stored.projection, Path(index_dir), stored.class_probs)

    def encode(self, predictor: Predictor, images: Sequence[np.ndarray] | np.ndarray, batch_size: int = 256) -> Encoded:
        """Query images encoded the way this index's items were (mirror averaging, probabilities)."""
        return predictor.encode(images, batch_size, flip_tta=self.flip_tta, with_probs=bool(self.rerank))

    def search_images(
        self, predictor: Predictor, images: Sequence[np.ndarray] | np.ndarray, k: int = 5
    ) -> list[list[dict]]:
        """Top-``k`` catalogue items for each HxWx3 uint8 image, encoded by ``predictor`` (the embedder)."""
        enc = self.encode(predictor, images)
        if enc.embeddings.shape[1] != self.dim:
            raise DataError(
                f"the embedder gives {enc.embeddings.shape[1]}-d vectors but the index holds "
                f"{self.dim}-d ones; rebuild the index or use its embedder"
            )
        return self.search(enc.embeddings, k, enc.class_probs)

    def _to_index_space(self, embeddings: np.ndarray) -> np.ndarray:
        """Checked query embeddings (N, dim), projected when the index has a projection."""
        x = check_vectors(embeddings, dim=self.dim, name="query embeddings")
        return self.projection.apply(x) if self.projection is not None else x

    def search_k_for(self, k: int) -> int:
        """The tuned ``search_k`` scaled to ``k`` (it was tuned for ``recall_k`` neighbours)."""
        if self.search_k < 0:
            return -1
        return max(k, int(np.ceil(self.search_k * max(1.0, k / self.recall_k))))

    def search(
        self, embeddings: np.ndarray, k: int = 5, class_probs: np.ndarray | None = None, rerank: bool = True
    ) -> list[list[dict]]:
        """Top-``k`` catalogue items for each query embedding (rows of an (N, dim) array).

        ``class_probs`` (N, C): the classifier's probabilities for the queries (re-ranking; without
        them only the neighbours' vote re-ranks). ``rerank=False``: plain nearest neighbours.
        """
        if k < 1:
            raise DataError(f"k must be >= 1, got {k}")
        x = self._to_index_space(embeddings)
        if class_probs is not None and len(class_probs) != len(x):
            raise DataError(f"class_probs has {len(class_probs)} rows for {len(x)} query embeddings")
        out = []
        for row, q in enumerate(x):

            def lookup(n: int, search_k: int, q: np.ndarray = q) -> Neighbours:
                return self.index.query(q, n, search_k)

            out.append(self._neighbours(lookup, k, None, None if class_probs is None else class_probs[row], rerank))
        return out

    def search_by_id(self, item_id: int, k: int = 5, rerank: bool = True) -> list[dict]:
        """Neighbours of catalogue item ``item_id``, excluding the item itself."""
        if k < 1:
            raise DataError(f"k must be >= 1, got {k}")
        row = self._row_of_id.get(int(item_id))
        if row is None:
            raise DataError(f"item id {item_id} is not in the index")

        def lookup(n: int, search_k: int) -> Neighbours:
            return self.index.query_item(row, n, search_k)

        probs = None if self.class_probs is None else np.asarray(self.class_probs[row])
        return self._neighbours(lookup, k, row, probs, rerank)

    def _result(self, row: int, distance: float) -> dict[str, Any]:
        rec = dict(self._records[row])
        rec["id"] = int(rec["id"])
        rec["distance"] = float(distance)
        return rec

    def _similarity(self, distances: np.ndarray) -> np.ndarray:
        """Index distances -> larger-is-closer scores: cosine for angular, else negated distance."""
        d = np.asarray(distances, dtype=np.float64)
        return 1.0 - d * d / 2.0 if self.metric == "angular" else -d

    def _neighbours(
        self, lookup: Lookup, k: int, exclude: int | None, probs: np.ndarray | None, rerank: bool
    ) -> list[dict]:
        """``lookup(n, search_k)`` -> (ids, distances) nearest first; drop ``exclude``, re-rank, keep k."""
        settings = self.rerank if rerank else None
        n = max(k, int(settings["candidates"])) if settings is not None else k
        n_ask = n + (1 if exclude is not None else 0)
        ids, ds = lookup(n_ask, self.search_k_for(n_ask))
        pairs = [(i, d) for i, d in zip(ids, ds) if i != exclude][:n]
        if settings is not None and pairs:
            cand = np.array([i for i, _ in pairs], dtype=np.int64)
            order = rerank_by_category(
                self._similarity(np.array([d for _, d in pairs])),
                self._item_class[cand],
                probs,
                self._n_classes,
                settings["weight"],
                settings["knn_weight"],
                settings["knn_neighbours"],
            )
            # an exact copy of the query stays the best match whatever its label
            copies_first = sorted(order, key=lambda j: pairs[j][1] > DUPLICATE_EPS)
            pairs = [pairs[j] for j in copies_first]
        return [self._result(i, d) for i, d in pairs[:k]]
