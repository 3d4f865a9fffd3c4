"""The ANN backend interface: what the index stage, the searcher, the tuner and the benchmark need.

A backend (:class:`AnnBackend`) builds an :class:`AnnIndex` over vectors 0..n-1 and loads a saved
one back; an index answers "the n nearest items to this vector / to item i". Two knobs, named
after Annoy's (the first backend, and the names in ``params.yaml`` and ``index_meta.json``):

* ``n_trees``: how much structure the build makes (Annoy: trees; an HNSW backend would map it
  to its graph degree M, an IVF one to its list count). The tuner doubles it when the recall
  target is out of reach.
* ``search_k``: how much one query looks at (Annoy: candidate nodes; HNSW: ``ef``; IVF:
  ``nprobe``); -1 = the backend's default. Recall must grow with it: the tuner bisects it.

Contract every backend keeps: ids are the row numbers of the build vectors; answers come nearest
first; distances follow :func:`fashionops.search.exact.pairwise_distances` for the metric (angular =
``sqrt(2 - 2 cos)``), so recall, re-ranking similarity and the duplicate threshold mean the same
thing whatever the backend; ``save`` is atomic (temp file + rename, no partial file on failure).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

import numpy as np

Neighbours = tuple[list[int], list[float]]  # (ids, distances), nearest first


class AnnIndex(ABC):
    """A built or loaded approximate nearest-neighbour index over items 0..n-1."""

    backend_name: ClassVar[str]  # the registry name of the backend that builds and loads it

    @property
    @abstractmethod
    def n_items(self) -> int:
        """Number of indexed vectors."""

    @abstractmethod
    def save(self, path: str | Path) -> Path:
        """Write the index to ``path`` atomically; returns ``path``."""

    @abstractmethod
    def query(self, vector: np.ndarray, n: int, search_k: int = -1) -> Neighbours:
        """The ``n`` nearest items to one vector (in the index's space)."""

    @abstractmethod
    def query_item(self, row: int, n: int, search_k: int = -1) -> Neighbours:
        """The ``n`` nearest items to indexed item ``row`` (the item itself included)."""

    def unload(self) -> None:  # noqa: B027 - optional hook: most backends hold nothing to release
        """Release memory or file mappings (the index is unusable afterwards)."""

    def knn(
        self, queries: np.ndarray, k: int, search_k: int = -1, exclude: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """k nearest items of each query row: (indices (q, k), distances (q, k)) padded with -1 / inf.

        ``exclude[i]`` (an item row) is dropped from query i's answers (self-queries); one more
        neighbour is asked for so k remain.
        """
        ask = k + (1 if exclude is not None else 0)
        idx = np.full((len(queries), k), -1, dtype=np.int64)
        dist = np.full((len(queries), k), np.inf, dtype=np.float32)
        for i, q in enumerate(queries):
            ids, ds = self.query(q, ask, search_k)
            if exclude is not None:
                keep = [j for j, n in enumerate(ids) if n != exclude[i]][:k]
                ids, ds = [ids[j] for j in keep], [ds[j] for j in keep]
            ids, ds = ids[:k], ds[:k]
            idx[i, : len(ids)] = ids
            dist[i, : len(ds)] = ds
        return idx, dist


class AnnBackend(ABC):
    """Builds and loads one kind of :class:`AnnIndex` (registered in ``fashionops.search.backends``)."""

    name: ClassVar[str]  # the registry key (a future ``index.backend`` value)
    index_file: ClassVar[str]  # the index's file name inside an index directory
    metrics: ClassVar[tuple[str, ...]]  # the ``index.metric`` values it supports

    @abstractmethod
    def build(
        self, vectors: np.ndarray, metric: str = "angular", n_trees: int = 50, seed: int = 42, n_jobs: int = 1
    ) -> AnnIndex:
        """Index ``vectors`` (ids 0..n-1); deterministic for a seed with ``n_jobs=1``."""

    @abstractmethod
    def load(self, path: str | Path, dim: int, metric: str) -> AnnIndex:
        """Open an index that :meth:`AnnIndex.save` wrote (``dim`` and ``metric`` from its metadata)."""
