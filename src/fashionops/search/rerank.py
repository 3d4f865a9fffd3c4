"""Category-aware re-ranking of a query's ANN candidates, and its ``index_meta.json`` settings.

``score = similarity + weight * P(query is of the candidate's category)``: a slightly less similar
item of the probable category overtakes a closer item of an unlikely one. Exact copies of the
query (distance below :data:`DUPLICATE_EPS`) stay first whatever their label (see the searcher).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fashionops.config import IndexConfig

# Softmax temperature over cosine similarities for the neighbours' category vote: neighbours a few
# hundredths closer count several times more (chosen on the validation split, with the weights).
KNN_VOTE_TEMPERATURE = 0.05
DUPLICATE_EPS = 1e-3  # Annoy computes angular distance in float32: identical vectors give ~1e-4


def rerank_by_category(
    similarity: np.ndarray,
    candidate_class: np.ndarray,
    class_probs: np.ndarray | None,
    n_classes: int,
    weight: float = 1.0,
    knn_weight: float = 0.5,
    knn_neighbours: int = 20,
) -> np.ndarray:
    """Order (best first) of one query's ANN candidates after category-aware re-ranking.

    ``score = similarity + weight * P(query is of the candidate's category)``. P blends the
    classifier's probabilities for the query (``1 - knn_weight``) with a similarity-weighted vote
    of the catalogue labels of the query's ``knn_neighbours`` nearest candidates (``knn_weight``);
    without probabilities (an autoencoder embedder) the vote alone. Candidates whose category the
    model does not know (``candidate_class`` -1) get P = 0. Equal scores keep the ANN order.
    Candidates must come nearest first, as the ANN index returns them.
    """
    sim = np.asarray(similarity, dtype=np.float64)
    cls = np.asarray(candidate_class, dtype=np.int64)
    near_sim, near_cls = sim[:knn_neighbours], cls[:knn_neighbours]
    known = near_cls >= 0
    vote = np.zeros(n_classes, dtype=np.float64)
    if known.any():
        w = np.exp((near_sim[known] - near_sim[known].max()) / KNN_VOTE_TEMPERATURE)
        np.add.at(vote, near_cls[known], w)
        vote /= vote.sum()
    if class_probs is None:
        p = vote
    else:
        p = (1.0 - knn_weight) * np.asarray(class_probs, dtype=np.float64) + knn_weight * vote
    prior = np.where(cls >= 0, p[np.maximum(cls, 0)], 0.0)
    return np.argsort(-(sim + weight * prior), kind="stable")


def rerank_settings(cfg: IndexConfig, label_column: str, classes: Sequence[str] | None) -> dict[str, Any] | None:
    """The ``rerank`` entry of ``index_meta.json`` from ``index.*`` params (None: re-ranking off)."""
    if cfg.rerank == "none":
        return None
    return {
        "kind": cfg.rerank,
        "candidates": cfg.rerank_candidates,
        "weight": cfg.rerank_weight,
        "knn_weight": cfg.rerank_knn_weight,
        "knn_neighbours": cfg.rerank_knn_neighbours,
        "label_column": label_column,
        "classes": list(classes) if classes else None,
    }
