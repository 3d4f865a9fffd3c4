"""How good a built index is: retrieval precision/mAP, duplicate handling and query latency.

Catalogue items are the queries, searched by id without themselves: a query is its stored
embedding (and class probabilities), what an uploaded photo of it gets.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from fashionops.inference.predictor import Encoded
from fashionops.search.rerank import DUPLICATE_EPS
from fashionops.search.searcher import IndexSearcher


def average_precision_at_k(relevant: np.ndarray, n_relevant: int) -> float:
    """AP@k of one ranked list: mean of precision@i at each hit, over min(k, n_relevant)."""
    if n_relevant <= 0:
        return float("nan")
    rel = np.asarray(relevant, dtype=float)
    hits = np.cumsum(rel)
    precisions = hits / np.arange(1, len(rel) + 1)
    return float((precisions * rel).sum() / min(len(rel), n_relevant))


def retrieval_quality(
    searcher: IndexSearcher,
    query_ids: Sequence[int],
    ks: Sequence[int] = (5, 10),
    columns: Sequence[str] = ("articleType", "subCategory"),
    rerank: bool = True,
    suffix: str = "",
) -> dict[str, float]:
    """precision@k and mAP@k per label column for catalogue queries (searched without themselves).

    A query is its stored embedding (and class probabilities): what an uploaded photo of it gets.
    """
    items = searcher.items
    counts = {c: items[c].value_counts().to_dict() for c in columns}
    label_of = {c: dict(zip(items["id"].astype(int), items[c])) for c in columns}
    prec: dict[tuple[str, int], list[float]] = {(c, k): [] for c in columns for k in ks}
    aps: dict[tuple[str, int], list[float]] = {(c, k): [] for c in columns for k in ks}
    k_max = max(ks)
    for qid in query_ids:
        res = searcher.search_by_id(int(qid), k_max, rerank=rerank)
        for c in columns:
            label = label_of[c][int(qid)]
            n_rel = counts[c].get(label, 0) - 1  # the query itself is not a candidate
            if n_rel <= 0:
                continue
            rel_all = np.array([r[c] == label for r in res], dtype=float)
            rel_all = np.pad(rel_all, (0, max(0, k_max - len(rel_all))))
            for k in ks:
                prec[(c, k)].append(float(rel_all[:k].mean()))
                aps[(c, k)].append(average_precision_at_k(rel_all[:k], n_rel))
    out: dict[str, float] = {}
    for c in columns:
        key = "article_type" if c == "articleType" else "subcategory" if c == "subCategory" else c
        for k in ks:
            out[f"precision_at_{k}_{key}{suffix}"] = float(np.mean(prec[(c, k)])) if prec[(c, k)] else float("nan")
            out[f"map_at_{k}_{key}{suffix}"] = float(np.mean(aps[(c, k)])) if aps[(c, k)] else float("nan")
    out["retrieval_queries"] = float(len(query_ids))
    return out


def duplicate_check(searcher: IndexSearcher, max_groups: int = 1000, seed: int = 42) -> dict[str, float]:
    """For byte-identical groups: do a member's copies come back first at distance ~0?"""
    items = searcher.items
    groups = [g for _, g in items.groupby("sha256") if len(g) > 1]
    if not groups:
        return {"duplicate_groups": 0.0, "duplicate_first_fraction": float("nan")}
    rng = np.random.default_rng(seed)
    if len(groups) > max_groups:
        groups = [groups[i] for i in rng.choice(len(groups), size=max_groups, replace=False)]
    ok = 0
    max_dist = 0.0
    for g in groups:
        ids = g["id"].astype(int).tolist()
        res = searcher.search_by_id(ids[0], len(ids) - 1)
        got = {r["id"] for r in res if r["distance"] <= DUPLICATE_EPS}
        max_dist = max([max_dist] + [r["distance"] for r in res if r["id"] in set(ids[1:])])
        ok += int(got == set(ids[1:]))
    return {
        "duplicate_groups": float(len(groups)),
        "duplicate_first_fraction": ok / len(groups),
        "duplicate_max_distance": float(max_dist),
    }


def query_latency(searcher: IndexSearcher, encoded: Encoded, k: int = 10) -> dict[str, float]:
    """Single-query latency (projection + ANN + id map + re-ranking) in ms: p50, p99, mean."""
    times = []
    for row, q in enumerate(encoded.embeddings):
        probs = None if encoded.class_probs is None else encoded.class_probs[row : row + 1]
        t0 = time.perf_counter()
        searcher.search(q[None, :], k, probs)
        times.append((time.perf_counter() - t0) * 1000.0)
    t = np.asarray(times)
    return {
        "query_p50_ms": float(np.percentile(t, 50)),
        "query_p99_ms": float(np.percentile(t, 99)),
        "query_mean_ms": float(t.mean()),
    }
