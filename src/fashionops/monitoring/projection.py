"""The compact embedding projection every observation keeps (server, batch scoring and the
training reference agree on it, so their projections are comparable).

A seeded Gaussian random projection of the L2-normalised embedding: ``R`` is a ``(D, k)`` matrix
of N(0, 1/k) entries drawn from ``numpy.random.default_rng(PROJECTION_SEED)`` for the embedding
size ``D`` and ``k = monitor.projection_dim``, so it depends on nothing but those two numbers (no
fitting, nothing to store or ship with a model). By Johnson–Lindenstrauss it keeps distances
between normalised embeddings to within a few tens of percent at k = 16 — enough for a
two-sample test on the distribution, which is all drift monitoring asks of it. A PCA fitted on
the reference would keep more variance, but would have to exist before the first request is
recorded and change with every model; the random projection does neither.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

PROJECTION_SEED = 20261201


@lru_cache(maxsize=8)
def projection_matrix(dim_in: int, dim_out: int) -> np.ndarray:
    """The fixed ``(dim_in, dim_out)`` float32 matrix (read-only, cached)."""
    rng = np.random.default_rng([PROJECTION_SEED, dim_in, dim_out])
    matrix = rng.standard_normal((dim_in, dim_out)).astype(np.float32) / np.float32(np.sqrt(dim_out))
    matrix.setflags(write=False)
    return matrix


def project(embeddings: np.ndarray, dim_out: int) -> np.ndarray:
    """``(N, D)`` embeddings -> ``(N, dim_out)`` float32 projections of their L2-normalised rows."""
    emb = np.asarray(embeddings, dtype=np.float32)
    if emb.ndim != 2:
        raise ValueError(f"expected (N, D) embeddings, got shape {emb.shape}")
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    unit = emb / np.maximum(norms, 1e-12)
    return unit @ projection_matrix(int(emb.shape[1]), int(dim_out))
