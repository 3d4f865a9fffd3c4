"""The HNSW backend: FAISS ``IndexHNSWFlat``, a layered proximity graph over the full vectors.

For catalogues of about a million items, where Annoy needs many trees and candidates for its
recall target. FAISS rather than hnswlib (``benchmarks/bench_ann_library.py``): on 100k clustered
256-d vectors, M=16, both reach recall@10 0.95 at ef=24, single-thread p50 0.087 ms (hnswlib 0.069),
build 19.4 s on 2 threads (hnswlib 15.9), the same memory; about 20% slower, far inside the 1 ms
target, and ``ef`` is a per-call search parameter (``SearchParametersHNSW``), so the server's
threads query one index concurrently with their own ef and no lock (hnswlib's ``set_ef`` is a
setting of the index object); ``faiss-cpu`` installs as a wheel (hnswlib compiles from source).

Knobs: the interface's ``n_trees`` is the graph degree M, ``search_k`` is ``ef`` (the candidate
list of one query, at least the number of neighbours asked for; -1 = :data:`DEFAULT_EF`), and
``ef_construction`` is an option of :class:`HnswBackend`. Metrics: ``angular`` (inner product on
L2-normalised vectors), ``euclidean`` (L2) and ``dot`` (inner product); distances are converted to
:func:`fashionops.search.exact.pairwise_distances`' convention. The seed drives the level each item
gets; a build with one thread is deterministic for a seed (with more, insertions race).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from fashionops.atomic import atomic_path
from fashionops.environ import usable_cores
from fashionops.errors import DataError, FashionOpsError
from fashionops.search.backends.base import AnnBackend, AnnIndex, Neighbours
from fashionops.search.vectors import check_vectors, l2_normalise

DEFAULT_EF = 64  # ef when a caller passes search_k=-1 (FAISS's own default, 16, is low for recall@10)
MAX_TUNED_EF = 1024  # the tuner's ef cap: past it a denser graph (larger M) is the cheaper way to recall
INNER_PRODUCT_METRICS = ("angular", "dot")  # searched as inner product; euclidean as L2


def _faiss() -> Any:
    """The ``faiss`` module, imported when an HNSW index is used; untyped (its bundled stubs lack
    ``SearchParametersHNSW`` and the graph's random generator)."""
    import faiss

    return faiss


class HnswGraphIndex(AnnIndex):
    """A FAISS ``IndexHNSWFlat`` under an ``IndexIDMap2`` (ids = item rows) behind :class:`AnnIndex` (``.faiss``).

    Queries only read the index, so threads may search it concurrently, each with its own ef.
    """

    backend_name: ClassVar[str] = "hnsw"

    def __init__(self, index: Any, metric: str, n_jobs: int = 1) -> None:
        self.faiss = index  # IndexIDMap2 over an IndexHNSWFlat: labels are the items' rows
        self.metric = metric
        self.n_jobs = n_jobs  # OpenMP threads for adding items

    @property
    def n_items(self) -> int:
        return int(self.faiss.ntotal)

    @property
    def m(self) -> int:
        """The graph degree M (level 0 holds 2*M links per item)."""
        return int(_faiss().downcast_index(self.faiss.index).hnsw.nb_neighbors(1))

    def add_rows(self, vectors: np.ndarray, rows: np.ndarray) -> None:
        """Insert ``vectors`` into the graph with ids ``rows`` (``n_jobs`` OpenMP threads)."""
        faiss = _faiss()
        vectors = check_vectors(vectors, dim=self.faiss.d)
        ids = np.asarray(rows, dtype=np.int64)
        if ids.shape != (len(vectors),):
            raise DataError(f"{len(ids)} row ids for {len(vectors)} vectors")
        if self.metric == "angular":
            vectors = l2_normalise(vectors)
        threads = usable_cores() if self.n_jobs < 1 else int(self.n_jobs)
        before = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(threads)  # this thread's OpenMP setting, restored below
        try:
            self.faiss.add_with_ids(vectors, ids)
        finally:
            faiss.omp_set_num_threads(before)

    def save(self, path: str | Path) -> Path:
        """Temp file + rename: no partial index file on failure."""
        faiss = _faiss()
        path = Path(path)
        with atomic_path(path) as tmp:
            faiss.write_index(self.faiss, str(tmp))
        return path

    def _search(self, queries: np.ndarray, n: int, search_k: int) -> tuple[np.ndarray, np.ndarray]:
        """Labels (q, n) (-1 where fewer were found) and distances in exact search's convention."""
        faiss = _faiss()
        x = check_vectors(queries, dim=self.faiss.d, name="queries")
        if self.metric == "angular":
            x = l2_normalise(x)
        ef = max(int(search_k) if search_k > 0 else DEFAULT_EF, n)
        scores, labels = self.faiss.search(x, n, params=faiss.SearchParametersHNSW(efSearch=ef))
        found = labels >= 0
        scores = np.where(found, scores, 0.0).astype(np.float32)  # FAISS pads with +-3.4e38
        if self.metric == "angular":  # inner product of unit vectors -> sqrt(2 - 2 cos), as Annoy
            dist = np.sqrt(np.maximum(2.0 - 2.0 * scores, 0.0))
        elif self.metric == "euclidean":  # FAISS gives squared L2
            dist = np.sqrt(np.maximum(scores, 0.0))
        else:  # dot: exact search ranks by the negated inner product
            dist = -scores
        return labels.astype(np.int64), np.where(found, dist, np.inf).astype(np.float32)

    def query(self, vector: np.ndarray, n: int, search_k: int = -1) -> Neighbours:
        n = min(int(n), self.n_items)
        if n < 1:
            return [], []
        labels, dist = self._search(np.asarray(vector, dtype=np.float32)[None, :], n, search_k)
        found = labels[0] >= 0
        return labels[0][found].tolist(), dist[0][found].tolist()

    def query_item(self, row: int, n: int, search_k: int = -1) -> Neighbours:
        try:  # the stored vector (unit length for angular): the item itself comes first at distance ~0
            vector = self.faiss.reconstruct(int(row))
        except RuntimeError:  # FAISS: "key not found"
            raise DataError(f"item row {row} is not in the index") from None
        return self.query(vector, n, search_k)

    def knn(
        self, queries: np.ndarray, k: int, search_k: int = -1, exclude: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """One batched search (FAISS spreads the queries over its threads); same answers and
        ``exclude`` semantics as :meth:`AnnIndex.knn`: ``exclude[i]`` dropped from query i, the
        remaining first k kept in order, padded with -1 / inf."""
        idx = np.full((len(queries), k), -1, dtype=np.int64)
        dist = np.full((len(queries), k), np.inf, dtype=np.float32)
        ask = min(k + (1 if exclude is not None else 0), self.n_items)
        if len(queries) == 0 or ask < 1:
            return idx, dist
        labels, ds = self._search(queries, ask, search_k)
        keep = labels >= 0
        if exclude is not None:
            keep &= labels != np.asarray(exclude, dtype=np.int64)[:, None]
        order = np.argsort(~keep, axis=1, kind="stable")[:, :k]  # kept answers first, in their order
        kept = np.take_along_axis(keep, order, axis=1)
        width = order.shape[1]
        idx[:, :width] = np.where(kept, np.take_along_axis(labels, order, axis=1), -1)
        dist[:, :width] = np.where(kept, np.take_along_axis(ds, order, axis=1), np.inf)
        return idx, dist

    def unload(self) -> None:
        self.faiss.reset()  # frees the vectors and the graph


class HnswBackend(AnnBackend):
    """FAISS HNSW (``n_trees`` = graph degree M, ``search_k`` = ef; ``ef_construction`` fixed here)."""

    name: ClassVar[str] = "hnsw"
    index_file: ClassVar[str] = "index.faiss"
    metrics: ClassVar[tuple[str, ...]] = ("angular", "euclidean", "dot")
    structure_knob: ClassVar[str] = "hnsw_m"
    search_knob: ClassVar[str] = "ef_search"
    tunes_on_held_out: ClassVar[bool] = True  # see AnnBackend: a graph flatters its own items

    def __init__(self, ef_construction: int = 200) -> None:
        if ef_construction < 1:
            raise FashionOpsError(f"index.hnsw_ef_construction must be >= 1, got {ef_construction}")
        self.ef_construction = int(ef_construction)

    def settings(self) -> dict[str, Any]:
        return {"ef_construction": self.ef_construction}

    def default_max_search_k(self, n_items: int, k: int) -> int:
        """Annoy's cap bounded by :data:`MAX_TUNED_EF`: ef in the thousands buys little recall."""
        return min(super().default_max_search_k(n_items, k), MAX_TUNED_EF)

    def build(
        self,
        vectors: np.ndarray,
        metric: str = "angular",
        n_trees: int = 16,
        seed: int = 42,
        n_jobs: int = 1,
        rows: np.ndarray | None = None,
    ) -> HnswGraphIndex:
        faiss = _faiss()
        self.check_metric(metric)
        vectors = check_vectors(vectors)
        if n_trees < 2:
            raise FashionOpsError(f"index.hnsw_m (the graph degree M) must be >= 2, got {n_trees}")
        kind = faiss.METRIC_INNER_PRODUCT if metric in INNER_PRODUCT_METRICS else faiss.METRIC_L2
        graph = faiss.IndexHNSWFlat(vectors.shape[1], int(n_trees), kind)
        graph.hnsw.efConstruction = self.ef_construction
        graph.hnsw.rng = faiss.RandomGenerator(int(seed))  # the levels items get
        # ids are the items' rows whatever order they are added in (tuning adds its queries last)
        index = HnswGraphIndex(faiss.IndexIDMap2(graph), metric, n_jobs)
        index.add_rows(vectors, np.arange(len(vectors)) if rows is None else rows)
        return index

    def load(self, path: str | Path, dim: int, metric: str) -> HnswGraphIndex:
        faiss = _faiss()
        self.check_metric(metric)
        index = faiss.read_index(str(path))
        kind = faiss.METRIC_INNER_PRODUCT if metric in INNER_PRODUCT_METRICS else faiss.METRIC_L2
        graph = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else None
        if not isinstance(graph, faiss.IndexHNSWFlat) or index.d != int(dim) or index.metric_type != kind:
            raise DataError(
                f"{path}: not a {dim}-d FAISS HNSW index (with row ids) for metric {metric} "
                f"({type(graph or index).__name__}, {index.d}-d, FAISS metric {index.metric_type})"
            )
        return HnswGraphIndex(index, metric)
