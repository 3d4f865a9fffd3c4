"""Exact (brute-force) k-NN and the tie-aware recall@k that measures an ANN index against it.

Distances follow Annoy's definitions for each metric (angular = ``sqrt(2 - 2 cos)``); every ANN
backend returns distances in the same convention, so recall and duplicate checks compare like
with like. Recall counts an approximate neighbour as a hit if its exact distance is within the
k-th exact distance (ties at the boundary are not misses).
"""

from __future__ import annotations

import numpy as np

from fashionops.errors import FashionOpsError
from fashionops.search.vectors import check_vectors, l2_normalise

METRICS = ("angular", "euclidean", "dot", "manhattan")


def pairwise_distances(
    queries: np.ndarray, vectors: np.ndarray, metric: str, vec_sq: np.ndarray | None = None
) -> np.ndarray:
    """Distances (q, n) as Annoy defines them; for ``dot`` the negated dot product (smaller = closer).

    ``angular`` expects both sides L2-normalised already; ``euclidean`` takes the squared norms
    of ``vectors`` in ``vec_sq`` (computed once per call site, not per chunk).
    """
    if metric == "angular":
        sims = queries @ vectors.T
        return np.sqrt(np.maximum(2.0 - 2.0 * sims, 0.0))
    if metric == "euclidean":
        if vec_sq is None:
            vec_sq = np.einsum("ij,ij->i", vectors, vectors)
        q_sq = np.einsum("ij,ij->i", queries, queries)[:, None]
        return np.sqrt(np.maximum(q_sq + vec_sq[None, :] - 2.0 * (queries @ vectors.T), 0.0))
    if metric == "dot":
        return -(queries @ vectors.T)
    if metric == "manhattan":
        return np.abs(queries[:, None, :] - vectors[None, :, :]).sum(axis=2)
    raise FashionOpsError(f"index.metric={metric!r}: exact search supports {', '.join(METRICS)}")


def exact_knn(
    vectors: np.ndarray,
    queries: np.ndarray,
    k: int,
    metric: str = "angular",
    exclude: np.ndarray | None = None,
    chunk: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force k nearest neighbours: (indices (q, k), distances (q, k)), chunked matrix products.

    ``exclude[i]`` (a row of ``vectors``) is removed from query i's answers (self-queries).
    """
    vectors = check_vectors(vectors)
    queries = check_vectors(queries, dim=vectors.shape[1], name="queries")
    if metric == "angular":
        vectors, queries = l2_normalise(vectors), l2_normalise(queries)
    k = min(k, vectors.shape[0] - (1 if exclude is not None else 0))
    vec_sq = np.einsum("ij,ij->i", vectors, vectors) if metric == "euclidean" else None
    # manhattan materialises (chunk, n, dim): keep that block near 2M floats
    step = chunk if metric != "manhattan" else max(1, min(chunk, 2_000_000 // max(1, vectors.size // 64)))
    out_idx = np.empty((len(queries), k), dtype=np.int64)
    out_dist = np.empty((len(queries), k), dtype=np.float32)
    for start in range(0, len(queries), step):
        d = pairwise_distances(queries[start : start + step], vectors, metric, vec_sq)
        if exclude is not None:
            d[np.arange(d.shape[0]), exclude[start : start + step]] = np.inf
        part = np.argpartition(d, k - 1, axis=1)[:, :k]
        part_dist = np.take_along_axis(d, part, axis=1)
        order = np.argsort(part_dist, axis=1, kind="stable")
        out_idx[start : start + step] = np.take_along_axis(part, order, axis=1)
        out_dist[start : start + step] = np.take_along_axis(part_dist, order, axis=1)
    return out_idx, out_dist


def recall_at_k(
    vectors: np.ndarray, queries: np.ndarray, approx_idx: np.ndarray, exact_dist: np.ndarray, metric: str = "angular"
) -> float:
    """Tie-aware recall@k: an approximate hit counts if its exact distance <= the k-th exact distance.

    ``approx_idx`` (q, k) may be padded with -1 (fewer answers than asked); ``exact_dist`` comes
    from :func:`exact_knn` on the same vectors and queries.
    """
    if metric == "angular":
        vectors, queries = l2_normalise(vectors), l2_normalise(queries)
    vec_sq = np.einsum("ij,ij->i", vectors, vectors) if metric == "euclidean" else None
    k = exact_dist.shape[1]
    hits = 0
    for i in range(len(queries)):
        ids = approx_idx[i][approx_idx[i] >= 0]
        if len(ids) == 0:
            continue
        sub_sq = vec_sq[ids] if vec_sq is not None else None
        d = pairwise_distances(queries[i : i + 1], vectors[ids], metric, sub_sq)[0]
        hits += int(np.sum(d <= exact_dist[i, -1] + 1e-5))
    return hits / float(k * len(queries))
