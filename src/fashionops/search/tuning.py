"""Recall-targeted tuning of an ANN index, through the backend interface.

The smallest ``search_k`` that reaches the target recall@k on self-excluded catalogue queries
(doubling to bracket it, then bisection); if the target is out of reach within ``max_search_k``,
the build doubles ``n_trees`` up to ``max_trees``. Works for any backend whose recall grows with
``search_k`` (see :mod:`fashionops.search.backends.base`); the trials name the two knobs as the
backend does (Annoy: ``n_trees``/``search_k``; HNSW: ``hnsw_m``/``ef_search``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fashionops.errors import DataError
from fashionops.search.backends import DEFAULT_BACKEND, AnnBackend, AnnIndex, get_backend
from fashionops.search.exact import exact_knn, recall_at_k
from fashionops.search.vectors import check_vectors

log = logging.getLogger(__name__)


@dataclass
class TuneResult:
    """What tuning chose: trees, search_k, the recall they reach and every measurement made."""

    n_trees: int
    search_k: int
    recall: float
    target: float
    reached: bool
    k: int
    n_queries: int
    build_s: float = 0.0
    trials: list[dict[str, Any]] = field(default_factory=list)


def search_k_for_target(
    index: AnnIndex,
    vectors: np.ndarray,
    queries: np.ndarray,
    rows: np.ndarray | None,
    exact_dist: np.ndarray,
    k: int,
    target: float,
    max_search_k: int,
    metric: str,
    trials: list[dict[str, Any]],
    n_trees: int,
    knobs: tuple[str, str] = ("n_trees", "search_k"),
) -> tuple[int, float] | None:
    """Smallest search_k in [k, max_search_k] with recall >= target (recall grows with search_k).

    Every measurement is appended to ``trials`` (keys: the backend's ``knobs`` names and
    ``recall``); None when even ``max_search_k`` misses the target.
    """
    cache: dict[int, float] = {}

    def measure(sk: int) -> float:
        if sk not in cache:
            idx, _ = index.knn(queries, k, sk, exclude=rows)
            cache[sk] = recall_at_k(vectors, queries, idx, exact_dist, metric)
            trials.append({knobs[0]: n_trees, knobs[1]: sk, "recall": cache[sk]})
        return cache[sk]

    # doubling to bracket, then bisection to the smallest value that reaches the target; never
    # below k: with fewer candidates than k Annoy can return fewer than k results
    lo, hi = k - 1, max(k, 1)
    while measure(hi) < target:
        if hi >= max_search_k:
            return None
        lo, hi = hi, min(hi * 2, max_search_k)
    while hi - lo > max(1, hi // 50):  # 2% resolution is plenty and saves queries
        mid = (lo + hi) // 2
        if measure(mid) >= target:
            hi = mid
        else:
            lo = mid
    return hi, cache[hi]


def tune_index(
    vectors: np.ndarray,
    metric: str = "angular",
    n_trees: int = 50,
    max_trees: int = 200,
    k: int = 10,
    target: float = 0.95,
    n_queries: int = 500,
    seed: int = 42,
    search_k: int = -1,
    path: str | Path | None = None,
    n_jobs: int = 1,
    max_search_k: int | None = None,
    backend: str | AnnBackend = DEFAULT_BACKEND,
) -> tuple[AnnIndex, TuneResult]:
    """Build the index and pick the smallest ``search_k`` reaching ``target`` recall@k.

    Queries are ``n_queries`` catalogue items (fixed by ``seed``) searched without themselves; for a
    backend that ``tunes_on_held_out`` (HNSW) they are left out of the build and added to the chosen
    index afterwards, so they are searched as new items. If the
    target is out of reach within ``max_search_k``, the tree count doubles up to ``max_trees``.
    A fixed ``search_k`` (not -1) is only measured. ``max_search_k`` (default: the backend's
    ``default_max_search_k``; Annoy: a fifth of the items, at least 100*k) bounds the candidates:
    past that, more trees are the cheaper way to recall. ``path``: also save the chosen index
    there. Returns ``(index, TuneResult)``.
    """
    ann = get_backend(backend) if isinstance(backend, str) else backend
    vectors = check_vectors(vectors)
    n = vectors.shape[0]
    if n < 2:
        raise DataError(f"embeddings: need at least 2 items to build a searchable index, got {n}")
    k = min(k, n - 1)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, size=min(n_queries, n), replace=False))
    queries = vectors[rows]
    held_out = ann.tunes_on_held_out and n - len(rows) > k
    if held_out:
        # the build leaves the queries out (they are added once tuned): they are new to the index,
        # as a customer's photo is; their true neighbours are among the other items
        kept = np.setdiff1d(np.arange(n), rows)
        _, exact_dist = exact_knn(vectors[kept], queries, k, metric)
        exclude = None
    else:
        _, exact_dist = exact_knn(vectors, queries, k, metric, exclude=rows)
        exclude = rows
    trials: list[dict[str, Any]] = []
    knobs = (ann.structure_knob, ann.search_knob)
    if max_search_k is None:
        max_search_k = ann.default_max_search_k(n, k)
    max_search_k = max(int(max_search_k), k)
    trees = n_trees
    best: tuple[AnnIndex, int, int, float, float] | None = None
    while True:
        t0 = time.perf_counter()
        if held_out:
            index = ann.build(vectors[kept], metric, trees, seed, n_jobs=n_jobs, rows=kept)
        else:
            index = ann.build(vectors, metric, trees, seed, n_jobs=n_jobs)
        build_s = time.perf_counter() - t0
        if search_k != -1:
            idx, _ = index.knn(queries, k, search_k, exclude=exclude)
            rec = recall_at_k(vectors, queries, idx, exact_dist, metric)
            trials.append({knobs[0]: trees, knobs[1]: search_k, "recall": rec})
            best = (index, trees, search_k, rec, build_s)
            break
        found = search_k_for_target(
            index, vectors, queries, exclude, exact_dist, k, target, max_search_k, metric, trials, trees, knobs
        )
        if found is not None:
            best = (index, trees, found[0], found[1], build_s)
            break
        rec = trials[-1]["recall"]
        log.info(
            "%s: %s %d reaches recall@%d %.4f at %s %d (target %.4f)",
            ann.name,
            knobs[0],
            trees,
            k,
            rec,
            knobs[1],
            max_search_k,
            target,
        )
        if best is None or rec > best[3]:
            best = (index, trees, max_search_k, rec, build_s)
        if trees >= max_trees:
            break
        trees = min(trees * 2, max_trees)
    index, trees, chosen, rec, build_s = best
    if held_out:
        t0 = time.perf_counter()
        index.add_rows(queries, rows)  # the index now holds every item
        build_s += time.perf_counter() - t0
    if path is not None:
        index.save(path)
    result = TuneResult(
        n_trees=trees,
        search_k=int(chosen),
        recall=float(rec),
        target=target,
        reached=bool(rec >= target),
        k=k,
        n_queries=len(rows),
        build_s=build_s,
        trials=trials,
    )
    log.info(
        "%s: %s %d, %s %d: recall@%d %.4f (target %.4f %s)",
        ann.name,
        knobs[0],
        trees,
        knobs[1],
        result.search_k,
        k,
        result.recall,
        target,
        "reached" if result.reached else "missed",
    )
    return index, result
