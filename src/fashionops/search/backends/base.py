"""The ANN backend interface: what the index stage, the searcher, the tuner and the benchmark need.

A backend (:class:`AnnBackend`) builds an :class:`AnnIndex` over vectors 0..n-1 and loads a saved
one back; an index answers "the n nearest items to this vector / to item i". Two knobs, named
after Annoy's in the interface (the first backend); each backend names them honestly for
``index_meta.json`` and the tuning trials (:attr:`AnnBackend.structure_knob`, :attr:`AnnBackend.search_knob`):

* ``n_trees``: how much structure the build makes (Annoy: trees; HNSW: the graph degree M; an IVF
  backend would map it to its list count). The tuner doubles it when the recall target is out of
  reach within :meth:`AnnBackend.default_max_search_k`.
* ``search_k``: how much one query looks at (Annoy: candidate nodes; HNSW: ``ef``; IVF:
  ``nprobe``); -1 = the backend's default. Recall must grow with it: the tuner bisects it.

Build options that are neither knob (HNSW's ``ef_construction``) are constructor arguments of the
backend; :meth:`AnnBackend.settings` names them for ``index_meta.json``.

Contract every backend keeps: ids are the row numbers of the build vectors; answers come nearest
first; distances follow :func:`fashionops.search.exact.pairwise_distances` for the metric (angular =
``sqrt(2 - 2 cos)``), so recall, re-ranking similarity and the duplicate threshold mean the same
thing whatever the backend; ``save`` is atomic (temp file + rename, no partial file on failure).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from fashionops.errors import FashionOpsError

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

    def add_rows(self, vectors: np.ndarray, rows: np.ndarray) -> None:
        """Add items whose ids are ``rows`` (backends with :attr:`AnnBackend.tunes_on_held_out`)."""
        raise FashionOpsError(f"a {self.backend_name} index cannot add items after its build")

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

    name: ClassVar[str]  # the registry key (an ``index.backend`` value)
    index_file: ClassVar[str]  # the index's file name inside an index directory
    metrics: ClassVar[tuple[str, ...]]  # the ``index.metric`` values it supports
    structure_knob: ClassVar[str] = "n_trees"  # the build knob's own name (meta, tuning trials)
    search_knob: ClassVar[str] = "search_k"  # the query knob's own name (meta, tuning trials)
    # Whether tuning leaves its queries out of the build and adds them after (``build(rows=...)``,
    # :meth:`AnnIndex.add_rows`). A graph reaches a query that is one of its own items through that
    # item's links, so self-excluded item queries overstate what a new photo gets (measured, HNSW on
    # 100k clustered vectors: 0.961 recall@10 on items at ef 12, 0.872 on held-out queries).
    tunes_on_held_out: ClassVar[bool] = False

    def check_metric(self, metric: str) -> None:
        """Refuse an ``index.metric`` this backend does not support, naming the ones it does."""
        if metric not in self.metrics:
            raise FashionOpsError(
                f"index.metric={metric} is not supported by index.backend={self.name} "
                f"(supported: {', '.join(self.metrics)})"
            )

    def settings(self) -> dict[str, Any]:
        """Build options other than the two knobs, as ``index_meta.json`` records them."""
        return {}

    def default_max_search_k(self, n_items: int, k: int) -> int:
        """The tuner's cap on ``search_k`` (past it, more structure is the cheaper way to recall):
        a fifth of the items, at least 100*k."""
        return max(n_items // 5, 100 * k)

    @abstractmethod
    def build(
        self,
        vectors: np.ndarray,
        metric: str = "angular",
        n_trees: int = 50,
        seed: int = 42,
        n_jobs: int = 1,
        rows: np.ndarray | None = None,
    ) -> AnnIndex:
        """Index ``vectors`` (ids 0..n-1, or ``rows`` where the backend ``tunes_on_held_out``);
        deterministic for a seed with ``n_jobs=1``."""

    @abstractmethod
    def load(self, path: str | Path, dim: int, metric: str) -> AnnIndex:
        """Open an index that :meth:`AnnIndex.save` wrote (``dim`` and ``metric`` from its metadata)."""
