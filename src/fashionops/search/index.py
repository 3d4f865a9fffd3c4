"""``index`` stage: catalogue embeddings, a recall-tuned Annoy index, and visual search.

Layout of ``index.out_dir`` (written to a temp dir, then renamed into place):
``index.ann`` (Annoy, ids 0..n-1), ``items.parquet`` (``annoy_idx`` -> catalogue ``id`` and labels),
``embeddings.npy`` (float32, L2-normalised, the embedder's space), ``index_meta.json`` and, when
``index.dim`` asks for one, ``projection.npz`` (rank-``dim`` SVD fitted on the catalogue; queries go
through it inside ``IndexSearcher``).

Recall is measured against exact brute-force search in the index's space with tie tolerance: an
approximate neighbour counts as a hit if its exact distance is within the k-th exact distance.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fashionops.atomic import atomic_path, staged_dir, write_json
from fashionops.config import Params
from fashionops.errors import DataError, FashionOpsError

ITEM_COLUMNS = ["id", "productDisplayName", "masterCategory", "subCategory", "articleType", "sha256"]
RESULT_COLUMNS = ["id", "productDisplayName", "masterCategory", "subCategory", "articleType"]
META_FILE = "index_meta.json"
INDEX_FILE = "index.ann"
ITEMS_FILE = "items.parquet"
EMBEDDINGS_FILE = "embeddings.npy"
PROJECTION_FILE = "projection.npz"
CLASS_PROBS_FILE = "class_probs.npy"  # the classifier's probabilities per item (re-ranking by id)
# Softmax temperature over cosine similarities for the neighbours' category vote: neighbours a few
# hundredths closer count several times more (chosen on the validation split, with the weights).
KNN_VOTE_TEMPERATURE = 0.05
DUPLICATE_EPS = 1e-3  # Annoy computes angular distance in float32: identical vectors give ~1e-4


# --------------------------------------------------------------------------- vectors
def check_vectors(vectors: Any, dim: int | None = None, name: str = "embeddings") -> np.ndarray:
    """Return ``vectors`` as a C-contiguous float32 (N, D) array or raise ``DataError``.

    Rejects an empty set, a wrong rank, a dimension other than ``dim`` and NaN/inf rows (naming
    the first bad rows), so nothing downstream builds an index from garbage.
    """
    arr = np.asarray(vectors)
    if arr.ndim == 1 and dim is not None and arr.shape[0] == dim:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise DataError(f"{name}: expected a 2-D array (n, dim), got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise DataError(f"{name}: empty set of vectors (0 rows)")
    if arr.shape[1] == 0:
        raise DataError(f"{name}: vectors have dimension 0")
    if dim is not None and arr.shape[1] != dim:
        raise DataError(f"{name}: dimension {arr.shape[1]} does not match the index dimension {dim}")
    if not np.issubdtype(arr.dtype, np.number):
        raise DataError(f"{name}: expected numbers, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise DataError(f"{name}: {len(rows)} vector(s) contain NaN or inf (rows {rows[:10].tolist()})")
    return arr


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation (zero rows stay zero)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


@dataclass
class Projection:
    """A linear projection ``(x - mean) @ components.T`` fitted on the catalogue (``mean`` is 0 for SVD)."""

    mean: np.ndarray
    components: np.ndarray
    explained_variance: float = 0.0

    @property
    def in_dim(self) -> int:
        return int(self.components.shape[1])

    @property
    def out_dim(self) -> int:
        return int(self.components.shape[0])

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        return ((vectors - self.mean) @ self.components.T).astype(np.float32)

    def save(self, path: str | Path) -> None:
        np.savez(path, mean=self.mean, components=self.components,
                 explained_variance=np.float64(self.explained_variance))

    @classmethod
    def load(cls, path: str | Path) -> Projection:
        with np.load(path) as z:
            return cls(z["mean"].astype(np.float32), z["components"].astype(np.float32),
                       float(z["explained_variance"]))


def fit_projection(vectors: np.ndarray, dim: int, seed: int = 42) -> Projection:
    """Rank-``dim`` projection fitted on ``vectors`` (deterministic for a seed).

    Uncentred truncated SVD, not PCA: it keeps dot products (so cosine neighbours) best for its
    rank. Measured on real EfficientNet-Lite0 catalogue features at 256-d, exact neighbours in the
    projected space recover 0.91 of the raw exact top-10, against 0.80 for centred PCA.
    """
    from sklearn.decomposition import TruncatedSVD

    vectors = check_vectors(vectors)
    if dim >= vectors.shape[1]:
        raise DataError(f"index.dim={dim} must be smaller than the embedding dimension {vectors.shape[1]}")
    if dim >= vectors.shape[0]:
        raise DataError(f"index.dim={dim} needs more than {dim} catalogue items, got {vectors.shape[0]}")
    svd = TruncatedSVD(n_components=dim, algorithm="randomized", random_state=seed).fit(vectors)
    return Projection(np.zeros(vectors.shape[1], dtype=np.float32), svd.components_.astype(np.float32),
                      float(svd.explained_variance_ratio_.sum()))


def clustered_vectors(n: int, dim: int, n_clusters: int = 100, latent_dim: int = 64, spread: float = 0.35,
                      noise: float = 0.02, seed: int = 0, chunk: int = 100_000) -> np.ndarray:
    """Synthetic embeddings shaped like real ones (for tests and benchmarks), L2-normalised float32.

    Real image embeddings lie near a low-dimensional manifold and form clusters of very unequal
    size (article types). So: Zipf-sized clusters with centres in a ``latent_dim`` space, points =
    centre + Gaussian spread there, lifted to ``dim`` by one fixed random linear map, plus a little
    isotropic noise in ``dim``. Uniform noise would make every neighbour equally far (ANN meaningless).
    """
    rng = np.random.default_rng(seed)
    lift = rng.standard_normal((latent_dim, dim)).astype(np.float32) / np.sqrt(latent_dim)
    centres = rng.standard_normal((n_clusters, latent_dim)).astype(np.float32)
    sizes = 1.0 / np.arange(1, n_clusters + 1) ** 0.8
    labels = rng.choice(n_clusters, size=n, p=sizes / sizes.sum())
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        lab = labels[start:start + chunk]
        latent = centres[lab] + spread * rng.standard_normal((len(lab), latent_dim)).astype(np.float32)
        x = latent @ lift + noise * rng.standard_normal((len(lab), dim)).astype(np.float32)
        out[start:start + chunk] = l2_normalise(x)
    return out


def densified_vectors(anchors: np.ndarray, n: int, neighbours: int = 10, noise: float = 1.5, seed: int = 0,
                      chunk: int = 10_000) -> np.ndarray:
    """``n`` synthetic vectors drawn around real embeddings (``anchors``), L2-normalised float32.

    Each point starts at a random anchor and moves a uniform random fraction of the way towards a
    Dirichlet-weighted mix of that anchor's ``neighbours`` nearest anchors: the catalogue's own
    local geometry (clumps, near-duplicates, manifold), made denser, plus isotropic noise of
    ``noise`` x the anchor's nearest-neighbour distance. ``noise=1.5`` is calibrated on the trained
    default model's 39,028 catalogue embeddings: at that size Annoy (50 trees, 256-d) needs the same
    search_k for recall@10 0.95 on these vectors as on the real ones (405 and 405), where
    ``clustered_vectors`` needs 8x more (3,240): that generator stays as the pessimistic case.
    """
    anchors = l2_normalise(check_vectors(anchors, name="anchors"))
    if len(anchors) <= neighbours:
        raise DataError(f"densified_vectors needs more than {neighbours} anchors, got {len(anchors)}")
    near, near_dist = exact_knn(anchors, anchors, neighbours, exclude=np.arange(len(anchors)))
    # isotropic noise scaled to each anchor's nearest-neighbour distance, so points fill volume
    noise_scale = (noise * near_dist[:, 0] / np.sqrt(anchors.shape[1])).astype(np.float32)
    rng = np.random.default_rng(seed)
    out = np.empty((n, anchors.shape[1]), dtype=np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        base = rng.integers(len(anchors), size=m)
        weights = rng.dirichlet(np.ones(neighbours), size=m).astype(np.float32)
        towards = np.einsum("mk,mkd->md", weights, anchors[near[base]])
        step = rng.uniform(0.0, 1.0, size=(m, 1)).astype(np.float32)
        jitter = noise_scale[base, None] * rng.standard_normal((m, anchors.shape[1]), dtype=np.float32)
        out[start:start + m] = l2_normalise(anchors[base] + step * (towards - anchors[base]) + jitter)
    return out


# --------------------------------------------------------------------------- exact search
def _pairwise(queries: np.ndarray, vectors: np.ndarray, metric: str, vec_sq: np.ndarray | None) -> np.ndarray:
    """Distances (q, n) as Annoy defines them; for ``dot`` the negated dot product (smaller = closer)."""
    if metric == "angular":
        sims = queries @ vectors.T  # both already L2-normalised by the caller
        return np.sqrt(np.maximum(2.0 - 2.0 * sims, 0.0))
    if metric == "euclidean":
        q_sq = np.einsum("ij,ij->i", queries, queries)[:, None]
        return np.sqrt(np.maximum(q_sq + vec_sq[None, :] - 2.0 * (queries @ vectors.T), 0.0))
    if metric == "dot":
        return -(queries @ vectors.T)
    if metric == "manhattan":
        return np.abs(queries[:, None, :] - vectors[None, :, :]).sum(axis=2)
    raise FashionOpsError(f"index.metric={metric!r}: exact search supports angular, euclidean, dot, manhattan")


def exact_knn(vectors: np.ndarray, queries: np.ndarray, k: int, metric: str = "angular",
              exclude: np.ndarray | None = None, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force k nearest neighbours: (indices (q, k), distances (q, k)), chunked matrix products.

    ``exclude[i]`` (a row of ``vectors``) is removed from query i's answers (self-queries).
    """
    vectors = check_vectors(vectors)
    queries = check_vectors(queries, dim=vectors.shape[1], name="queries")
    if metric == "angular":
        vectors, queries = l2_normalise(vectors), l2_normalise(queries)
    k = min(k, vectors.shape[0] - (1 if exclude is not None else 0))
    vec_sq = np.einsum("ij,ij->i", vectors, vectors) if metric == "euclidean" else None
    step = chunk if metric != "manhattan" else max(1, min(chunk, 2_000_000 // max(1, vectors.size // 64)))
    out_idx = np.empty((len(queries), k), dtype=np.int64)
    out_dist = np.empty((len(queries), k), dtype=np.float32)
    for start in range(0, len(queries), step):
        d = _pairwise(queries[start:start + step], vectors, metric, vec_sq)
        if exclude is not None:
            d[np.arange(d.shape[0]), exclude[start:start + step]] = np.inf
        part = np.argpartition(d, k - 1, axis=1)[:, :k]
        pd_ = np.take_along_axis(d, part, axis=1)
        order = np.argsort(pd_, axis=1, kind="stable")
        out_idx[start:start + step] = np.take_along_axis(part, order, axis=1)
        out_dist[start:start + step] = np.take_along_axis(pd_, order, axis=1)
    return out_idx, out_dist


# --------------------------------------------------------------------------- Annoy
def build_annoy(vectors: np.ndarray, metric: str = "angular", n_trees: int = 50, seed: int = 42,
                path: str | Path | None = None, n_jobs: int = 1):
    """Build an Annoy index over ``vectors`` (ids 0..n-1), deterministic for a seed with ``n_jobs=1``.

    With ``path`` the index is saved to a temp file and renamed, so a failure leaves no file.
    """
    from annoy import AnnoyIndex

    if metric == "hamming":
        raise FashionOpsError("index.metric=hamming needs binary codes; float embeddings use angular/euclidean/dot/manhattan")
    vectors = check_vectors(vectors)
    if n_trees < 1:
        raise FashionOpsError(f"index.n_trees must be >= 1, got {n_trees}")
    index = AnnoyIndex(vectors.shape[1], metric)
    index.set_seed(int(seed))
    for i, vec in enumerate(vectors):
        index.add_item(i, vec)
    index.build(int(n_trees), n_jobs=n_jobs)
    if path is not None:
        save_annoy(index, path)
    return index


def save_annoy(index, path: str | Path) -> Path:
    """Save a built Annoy index via temp file + rename (no partial ``index.ann`` on failure).

    Annoy's ``save`` re-maps the index onto the written file; the mapping survives the rename.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        if not index.save(str(tmp)):
            raise FashionOpsError(f"could not write the Annoy index to {tmp}")
    return path


def annoy_knn(index, queries: np.ndarray, k: int, search_k: int = -1,
              exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Query Annoy for each row; returns (indices, distances) padded with -1 / inf."""
    kk = k + (1 if exclude is not None else 0)
    idx = np.full((len(queries), k), -1, dtype=np.int64)
    dist = np.full((len(queries), k), np.inf, dtype=np.float32)
    for i, q in enumerate(queries):
        ids, ds = index.get_nns_by_vector(q, kk, search_k=int(search_k), include_distances=True)
        if exclude is not None:
            keep = [j for j, n in enumerate(ids) if n != exclude[i]][:k]
            ids, ds = [ids[j] for j in keep], [ds[j] for j in keep]
        ids, ds = ids[:k], ds[:k]
        idx[i, : len(ids)] = ids
        dist[i, : len(ds)] = ds
    return idx, dist


def recall_at_k(vectors: np.ndarray, queries: np.ndarray, approx_idx: np.ndarray,
                exact_dist: np.ndarray, metric: str = "angular") -> float:
    """Tie-aware recall@k: an approximate hit counts if its exact distance <= the k-th exact distance."""
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
        d = _pairwise(queries[i:i + 1], vectors[ids], metric, sub_sq)[0]
        hits += int(np.sum(d <= exact_dist[i, -1] + 1e-5))
    return hits / float(k * len(queries))


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


def _search_k_for_target(index, vectors: np.ndarray, queries: np.ndarray, rows: np.ndarray,
                         exact_dist: np.ndarray, k: int, target: float, max_search_k: int,
                         metric: str, trials: list[dict[str, Any]], n_trees: int) -> tuple[int, float] | None:
    """Smallest search_k in [k, max_search_k] with recall >= target (recall grows with search_k)."""
    cache: dict[int, float] = {}

    def measure(sk: int) -> float:
        if sk not in cache:
            idx, _ = annoy_knn(index, queries, k, sk, exclude=rows)
            cache[sk] = recall_at_k(vectors, queries, idx, exact_dist, metric)
            trials.append({"n_trees": n_trees, "search_k": sk, "recall": cache[sk]})
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


def tune_index(vectors: np.ndarray, metric: str = "angular", n_trees: int = 50, max_trees: int = 200,
               k: int = 10, target: float = 0.95, n_queries: int = 500, seed: int = 42,
               search_k: int = -1, path: str | Path | None = None, n_jobs: int = 1,
               max_search_k: int | None = None):
    """Build the index and pick the smallest ``search_k`` reaching ``target`` recall@k.

    Queries are ``n_queries`` catalogue items (fixed by ``seed``) searched without themselves. If the
    target is out of reach within ``max_search_k``, the tree count doubles up to ``max_trees``.
    A fixed ``search_k`` (not -1) is only measured. ``max_search_k`` (default: a fifth of the
    items, at least 100*k) bounds the candidates: past that, more trees are the cheaper way to
    recall. Returns ``(annoy_index, TuneResult)``.
    """
    vectors = check_vectors(vectors)
    n = vectors.shape[0]
    if n < 2:
        raise DataError(f"embeddings: need at least 2 items to build a searchable index, got {n}")
    k = min(k, n - 1)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, size=min(n_queries, n), replace=False))
    queries = vectors[rows]
    _, exact_dist = exact_knn(vectors, queries, k, metric, exclude=rows)
    trials: list[dict[str, Any]] = []
    if max_search_k is None:
        max_search_k = max(n // 5, 100 * k)
    max_search_k = max(int(max_search_k), k)
    trees = n_trees
    best: tuple[Any, int, int, float, float] | None = None
    while True:
        t0 = time.perf_counter()
        index = build_annoy(vectors, metric, trees, seed, path=None, n_jobs=n_jobs)
        build_s = time.perf_counter() - t0
        if search_k != -1:
            idx, _ = annoy_knn(index, queries, k, search_k, exclude=rows)
            rec = recall_at_k(vectors, queries, idx, exact_dist, metric)
            trials.append({"n_trees": trees, "search_k": search_k, "recall": rec})
            best = (index, trees, search_k, rec, build_s)
            break
        found = _search_k_for_target(index, vectors, queries, rows, exact_dist, k, target,
                                     max_search_k, metric, trials, trees)
        if found is not None:
            best = (index, trees, found[0], found[1], build_s)
            break
        rec = trials[-1]["recall"]
        if best is None or rec > best[3]:
            best = (index, trees, max_search_k, rec, build_s)
        if trees >= max_trees:
            break
        trees = min(trees * 2, max_trees)
    index, trees, chosen, rec, build_s = best
    if path is not None:
        save_annoy(index, path)
    result = TuneResult(n_trees=trees, search_k=int(chosen), recall=float(rec), target=target,
                        reached=bool(rec >= target), k=k, n_queries=len(rows), build_s=build_s,
                        trials=trials)
    return index, result


# --------------------------------------------------------------------------- embeddings
@dataclass
class Encoded:
    """Images as the index sees them: L2-normalised embeddings (N, D) and, from a classifier
    embedder when asked, its class probabilities (N, C) in the order of ``model_spec.classes``."""

    embeddings: np.ndarray
    class_probs: np.ndarray | None = None


def encode_arrays(module, spec: dict[str, Any], images: Sequence[np.ndarray] | np.ndarray,
                  batch_size: int = 256, device: Any = None, flip_tta: bool = False,
                  with_probs: bool = False) -> Encoded:
    """Embed HxWx3 uint8 images with ``module.embed`` (and the head, for ``with_probs``).

    Images are resized to the model's input size. ``flip_tta``: each image and its mirror image go
    through the model together; the embedding is the normalised sum of both normalised features
    and the logits their mean (measured: +0.5 points same-type precision@5 on the validation split).
    A projection (if the index has one) is applied by ``IndexSearcher``, not here, so these vectors
    are the embedder's own space. Probabilities need a classifier (``embed_with_logits``); an
    autoencoder gives ``class_probs=None``.
    """
    import torch
    import torch.nn.functional as F

    from fashionops.inference.preprocess import preprocess_batch

    n = len(images)
    if n == 0:
        raise DataError("embed_arrays: no images given")
    device = torch.device(device) if device is not None else next(
        (p.device for p in module.parameters()), torch.device("cpu"))
    with_probs = with_probs and hasattr(module, "embed_with_logits")
    h, w = _input_size(spec)
    module.eval()
    embeddings: list[np.ndarray] = []
    probs: list[np.ndarray] = []
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            x = preprocess_batch(_resize_batch(images[start:start + batch_size], h, w), spec, device)
            m = x.shape[0]
            if flip_tta:
                x = torch.cat([x, torch.flip(x, dims=[3])])
            feats, logits = module.embed_with_logits(x) if with_probs else (module.embed(x), None)
            feats = F.normalize(feats.reshape(feats.shape[0], -1).float(), dim=1)
            if flip_tta:
                feats = F.normalize(feats[:m] + feats[m:], dim=1)
                logits = None if logits is None else (logits[:m].float() + logits[m:].float()) / 2
            embeddings.append(feats.cpu().numpy().astype(np.float32))
            if logits is not None:
                probs.append(torch.softmax(logits.float(), dim=1).cpu().numpy().astype(np.float32))
    return Encoded(np.concatenate(embeddings, axis=0), np.concatenate(probs, axis=0) if probs else None)


def embed_arrays(module, spec: dict[str, Any], images: Sequence[np.ndarray] | np.ndarray,
                 batch_size: int = 256, device: Any = None) -> np.ndarray:
    """Embed HxWx3 uint8 images -> (N, D) float32, L2-normalised (see :func:`encode_arrays`)."""
    return encode_arrays(module, spec, images, batch_size, device).embeddings


def _input_size(spec: dict[str, Any]) -> tuple[int, int]:
    h = spec.get("input_height") or spec.get("image_height")
    w = spec.get("input_width") or spec.get("image_width")
    if not h or not w:
        raise FashionOpsError("model_spec.json: input_height/input_width missing")
    return int(h), int(w)


def _resize_batch(images: Sequence[np.ndarray] | np.ndarray, h: int, w: int) -> np.ndarray:
    """Stack images into uint8 NHWC at (h, w), resizing only those of another size."""
    if isinstance(images, np.ndarray) and images.ndim == 4 and images.shape[1:3] == (h, w):
        return np.ascontiguousarray(images)
    from fashionops.data.imaging import resize_rgb

    return np.stack([img if img.shape[:2] == (h, w) else resize_rgb(img, h, w) for img in images])


def load_embedder(params: Params):
    """``(module, spec)`` of the model the index embeds with (``index.embedder_dir`` or ``train.out_dir``)."""
    from fashionops.models.factory import load_model

    model_dir = Path(params.index.embedder_dir or params.train.out_dir)
    if not (model_dir / "model_spec.json").is_file():
        raise FashionOpsError(f"no trained model in {model_dir} (model_spec.json missing); run `fashionops train`")
    module, spec = load_model(model_dir)
    task = spec.get("task", "classifier")
    if task != params.index.embedder:
        raise FashionOpsError(
            f"index.embedder={params.index.embedder} but the model in {model_dir} is a {task}; "
            f"set index.embedder_dir to a {params.index.embedder} model or index.embedder={task}")
    return module, spec


def catalogue_items(raw_dir: str | Path) -> pd.DataFrame:
    """Every catalogue row with an image: the index's items (``annoy_idx`` = row order), with sha256."""
    from fashionops.data.catalogue import load_catalogue

    cat = load_catalogue(raw_dir)
    if cat.empty:
        raise DataError(f"{raw_dir}: the catalogue is empty")
    cat = cat.sort_values("id", kind="stable").reset_index(drop=True)
    for col in RESULT_COLUMNS:
        if col not in cat:
            cat[col] = None
    return cat


def embed_catalogue(cat: pd.DataFrame, module, spec: dict[str, Any], batch_size: int = 256,
                    flip_tta: bool = False, with_probs: bool = False) -> tuple[Encoded, pd.DataFrame]:
    """Decode every catalogue image at the model's input size and encode it (:func:`encode_arrays`).

    Returns ``(encoded, items)`` where ``items`` has ``annoy_idx`` and ``sha256`` of the file bytes.
    Unreadable images raise ``DataError`` naming the file.
    """
    from fashionops.data.imaging import load_rgb, resize_rgb

    h, w = _input_size(spec)
    chunks: list[Encoded] = []
    shas: list[str] = []
    batch: list[np.ndarray] = []

    def flush() -> None:
        chunks.append(encode_arrays(module, spec, np.stack(batch), batch_size, flip_tta=flip_tta,
                                    with_probs=with_probs))
        batch.clear()

    for item_id, file in zip(cat["id"], cat["file"]):
        data = Path(file).read_bytes()
        shas.append(hashlib.sha256(data).hexdigest())
        img = load_rgb(data, name=str(file))
        batch.append(img if img.shape[:2] == (h, w) else resize_rgb(img, h, w))
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    items = cat.copy()
    items["sha256"] = shas
    items.insert(0, "annoy_idx", np.arange(len(items), dtype=np.int64))
    items = items[["annoy_idx", *ITEM_COLUMNS, "file"]]
    probs = [c.class_probs for c in chunks if c.class_probs is not None]
    encoded = Encoded(np.concatenate([c.embeddings for c in chunks], axis=0),
                      np.concatenate(probs, axis=0) if len(probs) == len(chunks) else None)
    return encoded, items


# --------------------------------------------------------------------------- re-ranking
def rerank_by_category(similarity: np.ndarray, candidate_class: np.ndarray, class_probs: np.ndarray | None,
                       n_classes: int, weight: float = 1.0, knn_weight: float = 0.5,
                       knn_neighbours: int = 20) -> np.ndarray:
    """Order (best first) of one query's ANN candidates after category-aware re-ranking.

    ``score = similarity + weight * P(query is of the candidate's category)``. P blends the
    classifier's probabilities for the query (``1 - knn_weight``) with a similarity-weighted vote
    of the catalogue labels of the query's ``knn_neighbours`` nearest candidates (``knn_weight``);
    without probabilities (an autoencoder embedder) the vote alone. Candidates whose category the
    model does not know (``candidate_class`` -1) get P = 0. Equal scores keep the ANN order.
    Candidates must come nearest first, as Annoy returns them.
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


def rerank_settings(cfg: Any, label_column: str, classes: Sequence[str] | None) -> dict[str, Any] | None:
    """The ``rerank`` entry of ``index_meta.json`` from ``index.*`` params (None: re-ranking off)."""
    if cfg.rerank == "none":
        return None
    return {"kind": cfg.rerank, "candidates": cfg.rerank_candidates, "weight": cfg.rerank_weight,
            "knn_weight": cfg.rerank_knn_weight, "knn_neighbours": cfg.rerank_knn_neighbours,
            "label_column": label_column, "classes": list(classes) if classes else None}


# --------------------------------------------------------------------------- searcher
class IndexSearcher:
    """A loaded index: embeddings in, catalogue items out (projection, id map and re-ranking here).

    With ``rerank`` in the index metadata, the ``candidates`` nearest items are re-ordered by
    :func:`rerank_by_category`; catalogue items searched by id use their stored embedding and
    class probabilities, exactly as an uploaded photo of them would.
    """

    def __init__(self, index, items: pd.DataFrame, meta: dict[str, Any], projection: Projection | None,
                 index_dir: Path | None = None, class_probs: np.ndarray | None = None):
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
        """Load ``index.ann``, ``items.parquet``, ``index_meta.json`` (+ ``projection.npz``, ``class_probs.npy``)."""
        from annoy import AnnoyIndex

        index_dir = Path(index_dir)
        for name in (INDEX_FILE, ITEMS_FILE, META_FILE):
            if not (index_dir / name).is_file():
                raise FashionOpsError(f"{index_dir / name} not found; run `fashionops index`")
        meta = json.loads((index_dir / META_FILE).read_text())
        items = pd.read_parquet(index_dir / ITEMS_FILE).sort_values("annoy_idx").reset_index(drop=True)
        projection = Projection.load(index_dir / PROJECTION_FILE) if meta.get("projection") else None
        probs_path = index_dir / CLASS_PROBS_FILE
        class_probs = np.load(probs_path, mmap_mode="r") if probs_path.is_file() else None
        if class_probs is not None and len(class_probs) != len(items):
            raise DataError(f"{probs_path}: {len(class_probs)} rows but items.parquet has {len(items)}")
        index = AnnoyIndex(int(meta["index_dim"]), meta["metric"])
        index.load(str(index_dir / INDEX_FILE))  # memory-mapped: cheap to load, shared between processes
        if index.get_n_items() != len(items):
            raise DataError(f"{index_dir}: index has {index.get_n_items()} items but items.parquet has {len(items)}")
        return cls(index, items, meta, projection, index_dir, class_probs)

    def encode(self, module, spec: dict[str, Any], images: Sequence[np.ndarray] | np.ndarray,
               batch_size: int = 256) -> Encoded:
        """Query images encoded the way this index's items were (mirror averaging, probabilities)."""
        return encode_arrays(module, spec, images, batch_size, flip_tta=self.flip_tta,
                             with_probs=bool(self.rerank))

    def search_images(self, module, spec: dict[str, Any], images: Sequence[np.ndarray] | np.ndarray,
                      k: int = 5) -> list[list[dict]]:
        """Top-``k`` catalogue items for each HxWx3 uint8 image, embedded with ``module``."""
        enc = self.encode(module, spec, images)
        if enc.embeddings.shape[1] != self.dim:
            raise DataError(f"the embedder gives {enc.embeddings.shape[1]}-d vectors but the index holds "
                            f"{self.dim}-d ones; rebuild the index or use its embedder")
        return self.search(enc.embeddings, k, enc.class_probs)

    def _to_index_space(self, embeddings: np.ndarray) -> np.ndarray:
        x = check_vectors(embeddings, dim=self.dim, name="query embeddings")
        return self.projection.apply(x) if self.projection is not None else x

    def search_k_for(self, k: int) -> int:
        """The tuned ``search_k`` scaled to ``k`` (it was tuned for ``recall_k`` neighbours)."""
        if self.search_k < 0:
            return -1
        return max(k, int(np.ceil(self.search_k * max(1.0, k / self.recall_k))))

    def _result(self, annoy_idx: int, distance: float) -> dict[str, Any]:
        rec = dict(self._records[annoy_idx])
        rec["id"] = int(rec["id"])
        rec["distance"] = float(distance)
        return rec

    def _similarity(self, distances: np.ndarray) -> np.ndarray:
        """Annoy distances -> larger-is-closer scores: cosine for angular, else negated distance."""
        d = np.asarray(distances, dtype=np.float64)
        return 1.0 - d * d / 2.0 if self.metric == "angular" else -d

    def _neighbours(self, lookup, k: int, exclude: int | None, probs: np.ndarray | None,
                    rerank: bool) -> list[dict]:
        """``lookup(n, search_k)`` -> (ids, distances) nearest first; drop ``exclude``, re-rank, keep k."""
        use_rerank = rerank and self.rerank is not None
        n = max(k, int(self.rerank["candidates"])) if use_rerank else k
        n_ask = n + (1 if exclude is not None else 0)
        ids, ds = lookup(n_ask, self.search_k_for(n_ask))
        pairs = [(i, d) for i, d in zip(ids, ds) if i != exclude][:n]
        if use_rerank and pairs:
            cand = np.array([i for i, _ in pairs], dtype=np.int64)
            order = rerank_by_category(self._similarity(np.array([d for _, d in pairs])), self._item_class[cand],
                                       probs, self._n_classes, self.rerank["weight"],
                                       self.rerank["knn_weight"], self.rerank["knn_neighbours"])
            # an exact copy of the query stays the best match whatever its label
            order = sorted(order, key=lambda j: pairs[j][1] > DUPLICATE_EPS)
            pairs = [pairs[j] for j in order]
        return [self._result(i, d) for i, d in pairs[:k]]

    def search(self, embeddings: np.ndarray, k: int = 5, class_probs: np.ndarray | None = None,
               rerank: bool = True) -> list[list[dict]]:
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
            def lookup(n: int, search_k: int, q=q):
                return self.index.get_nns_by_vector(q, n, search_k=search_k, include_distances=True)
            out.append(self._neighbours(lookup, k, None, None if class_probs is None else class_probs[row], rerank))
        return out

    def search_by_id(self, item_id: int, k: int = 5, rerank: bool = True) -> list[dict]:
        """Neighbours of catalogue item ``item_id``, excluding the item itself."""
        if k < 1:
            raise DataError(f"k must be >= 1, got {k}")
        row = self._row_of_id.get(int(item_id))
        if row is None:
            raise DataError(f"item id {item_id} is not in the index")

        def lookup(n: int, search_k: int):
            return self.index.get_nns_by_item(row, n, search_k=search_k, include_distances=True)
        probs = None if self.class_probs is None else np.asarray(self.class_probs[row])
        return self._neighbours(lookup, k, row, probs, rerank)


# --------------------------------------------------------------------------- writing
def write_index_dir(out_dir: str | Path, vectors: np.ndarray, index, items: pd.DataFrame,
                    meta: dict[str, Any], projection: Projection | None,
                    class_probs: np.ndarray | None = None) -> Path:
    """Build + save everything into a temp sibling dir, then swap it in: never a partial index dir."""
    out_dir = Path(out_dir)
    with staged_dir(out_dir) as tmp:
        save_annoy(index, tmp / INDEX_FILE)
        items[["annoy_idx", *ITEM_COLUMNS]].to_parquet(tmp / ITEMS_FILE, index=False)
        np.save(tmp / EMBEDDINGS_FILE, vectors.astype(np.float32))
        if projection is not None:
            projection.save(tmp / PROJECTION_FILE)
        if class_probs is not None:
            np.save(tmp / CLASS_PROBS_FILE, class_probs.astype(np.float32))
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=_json_default))
    return out_dir


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


# --------------------------------------------------------------------------- quality
def average_precision_at_k(relevant: np.ndarray, n_relevant: int) -> float:
    """AP@k of one ranked list: mean of precision@i at each hit, over min(k, n_relevant)."""
    if n_relevant <= 0:
        return float("nan")
    rel = np.asarray(relevant, dtype=float)
    hits = np.cumsum(rel)
    precisions = hits / np.arange(1, len(rel) + 1)
    return float((precisions * rel).sum() / min(len(rel), n_relevant))


def retrieval_quality(searcher: IndexSearcher, query_ids: Sequence[int], ks: Sequence[int] = (5, 10),
                      columns: Sequence[str] = ("articleType", "subCategory"), rerank: bool = True,
                      suffix: str = "") -> dict[str, float]:
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
    return {"duplicate_groups": float(len(groups)), "duplicate_first_fraction": ok / len(groups),
            "duplicate_max_distance": float(max_dist)}


def query_latency(searcher: IndexSearcher, encoded: Encoded, k: int = 10) -> dict[str, float]:
    """Single-query latency (projection + Annoy + id map + re-ranking) in ms: p50, p99, mean."""
    times = []
    for row, q in enumerate(encoded.embeddings):
        probs = None if encoded.class_probs is None else encoded.class_probs[row:row + 1]
        t0 = time.perf_counter()
        searcher.search(q[None, :], k, probs)
        times.append((time.perf_counter() - t0) * 1000.0)
    t = np.asarray(times)
    return {"query_p50_ms": float(np.percentile(t, 50)), "query_p99_ms": float(np.percentile(t, 99)),
            "query_mean_ms": float(t.mean())}


# --------------------------------------------------------------------------- stage
def _test_ids(params: Params, items: pd.DataFrame, n: int, seed: int) -> list[int]:
    """Test-split ids of the prepared cache that are in the index (else a seeded catalogue sample)."""
    path = Path(params.prepare.out_dir) / "index.parquet"
    known = set(items["id"].astype(int))
    ids: list[int] = []
    if path.is_file():
        prep = pd.read_parquet(path)
        if "is_copy" in prep:
            prep = prep[~prep["is_copy"].astype(bool)]
        ids = sorted({int(i) for i in prep.loc[prep["split"] == "test", "id"]} & known)
    if not ids:
        ids = sorted(known)
    rng = np.random.default_rng(seed)
    if len(ids) > n:
        ids = sorted(rng.choice(ids, size=n, replace=False).tolist())
    return ids


def _retrieval_picture(searcher: IndexSearcher, items: pd.DataFrame, query_ids: list[int],
                       n: int, seed: int, path: Path, k: int = 5) -> Path:
    from fashionops.data.imaging import load_rgb
    from fashionops.evaluation.plots import plot_retrieval

    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(query_ids, size=min(n, len(query_ids)), replace=False).tolist())
    file_of = dict(zip(items["id"].astype(int), items["file"]))
    type_of = dict(zip(items["id"].astype(int), items["articleType"]))
    queries, results = [], []
    for qid in chosen:
        queries.append((load_rgb(file_of[qid]), f"{qid} {type_of[qid]}"))
        res = searcher.search_by_id(qid, k)
        results.append([(load_rgb(file_of[r["id"]]), f"{r['articleType']}\nd={r['distance']:.3f}") for r in res])
    return plot_retrieval(queries, results, path)


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run_index(params: Params) -> dict[str, Any]:
    """Embed every catalogue item, build the tuned Annoy index, measure it, log it to MLflow.

    Writes ``index.out_dir`` (see module doc) and ``index.report_dir/{metrics.json,retrieval.png}``.
    """
    cfg = params.index
    t_start = time.perf_counter()
    module, spec = load_embedder(params)
    cat = catalogue_items(params.data.raw_dir)
    t0 = time.perf_counter()
    label_column = str(spec.get("label_column") or params.prepare.label)
    rerank = rerank_settings(cfg, label_column, spec.get("classes") if spec.get("task", "classifier") == "classifier" else None)
    encoded, items = embed_catalogue(cat, module, spec, cfg.batch_size, flip_tta=cfg.flip_tta,
                                     with_probs=rerank is not None)
    embed_s = time.perf_counter() - t0
    vectors = check_vectors(encoded.embeddings)

    dim = getattr(cfg, "dim", None)
    # a projection only makes sense below the embedding size and the item count (tiny catalogues)
    use_projection = bool(dim) and dim < min(vectors.shape[1], len(vectors))
    projection = fit_projection(vectors, dim, cfg.seed) if use_projection else None
    index_vectors = projection.apply(vectors) if projection is not None else vectors

    t0 = time.perf_counter()
    # Tune a little above the target: the tuning queries are a sample, and held-out queries
    # should still reach recall_target (measured: tuned 0.9504 -> held-out 0.9467 with no margin).
    tune_target = min(1.0, cfg.recall_target + cfg.recall_margin)
    index, tuned = tune_index(index_vectors, cfg.metric, cfg.n_trees, cfg.max_trees, cfg.recall_k,
                              tune_target, cfg.tune_queries, cfg.seed, cfg.search_k)
    tune_s = time.perf_counter() - t0
    meta = {
        "dim": int(vectors.shape[1]), "index_dim": int(index_vectors.shape[1]), "metric": cfg.metric,
        "n_trees": tuned.n_trees, "search_k": tuned.search_k, "seed": cfg.seed, "n_items": len(items),
        "recall_k": tuned.k, "recall_target": cfg.recall_target, "tuned_recall": tuned.recall,
        "target_reached": tuned.reached, "tune_queries": tuned.n_queries,
        "projection": PROJECTION_FILE if projection is not None else None,
        "projection_explained_variance": projection.explained_variance if projection is not None else None,
        "embedder": cfg.embedder, "embedder_dir": str(params.index.embedder_dir or params.train.out_dir),
        "embedding_model": {k: spec.get(k) for k in ("task", "backbone", "label_column", "input_height",
                                                      "input_width", "embedding_dim") if k in spec},
        "flip_tta": cfg.flip_tta, "rerank": rerank,
        "tuning_trials": tuned.trials,
    }
    out_dir = write_index_dir(cfg.out_dir, vectors, index, items, meta, projection, encoded.class_probs)
    index.unload()
    build_s = tuned.build_s

    searcher = IndexSearcher.load(out_dir)
    query_ids = _test_ids(params, items, n=1000, seed=cfg.seed)
    row_of = dict(zip(items["id"].astype(int), items["annoy_idx"]))
    q_rows = np.array([row_of[i] for i in query_ids])
    metrics: dict[str, Any] = {
        "n_items": float(len(items)), "dim": float(vectors.shape[1]), "index_dim": float(index_vectors.shape[1]),
        "n_trees": float(tuned.n_trees), "search_k": float(tuned.search_k),
        "tuned_recall_at_k": tuned.recall, "recall_target": cfg.recall_target,
    }
    metrics.update(retrieval_quality(searcher, query_ids))
    if rerank is not None:  # what re-ranking adds over plain nearest neighbours
        metrics.update(retrieval_quality(searcher, query_ids, columns=("articleType",), rerank=False,
                                         suffix="_no_rerank"))
    metrics.update(duplicate_check(searcher, seed=cfg.seed))
    # ANN recall@10 vs exact on the test queries (self excluded), in the index's space
    k10 = min(10, len(items) - 1)
    qv = index_vectors[q_rows]
    _, ex_d = exact_knn(index_vectors, qv, k10, cfg.metric, exclude=q_rows)
    ap_i, _ = annoy_knn(searcher.index, qv, k10, tuned.search_k, exclude=q_rows)
    metrics["ann_recall_at_10"] = recall_at_k(index_vectors, qv, ap_i, ex_d, cfg.metric)
    if projection is not None:  # what the projection costs against exact search on the raw embeddings
        _, ex_full = exact_knn(vectors, vectors[q_rows], k10, cfg.metric, exclude=q_rows)
        metrics["recall_at_10_vs_unprojected_exact"] = recall_at_k(vectors, vectors[q_rows], ap_i, ex_full, cfg.metric)
    probs = None if encoded.class_probs is None else encoded.class_probs[q_rows[:500]]
    metrics.update(query_latency(searcher, Encoded(vectors[q_rows[:500]], probs), k=cfg.recall_k))
    metrics.update({"embed_s": embed_s, "tune_s": tune_s, "build_s": build_s,
                    "index_size_mb": (out_dir / INDEX_FILE).stat().st_size / 1e6,
                    "index_dir_size_mb": _dir_size(out_dir) / 1e6})

    report_dir = Path(cfg.report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    picture = _retrieval_picture(searcher, items, query_ids, cfg.retrieval_queries, cfg.seed,
                                 report_dir / "retrieval.png")
    metrics["total_s"] = time.perf_counter() - t_start
    metrics = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in metrics.items()}
    write_json(report_dir / "metrics.json", metrics, default=_json_default)
    _log_to_mlflow(params, metrics, [picture, report_dir / "metrics.json", out_dir / META_FILE])
    return {"index_dir": str(out_dir), "metrics": metrics}


def _log_to_mlflow(params: Params, metrics: dict[str, Any], files: list[Path]) -> None:
    import mlflow

    from fashionops.tracking import pipeline_run

    with pipeline_run(params):
        mlflow.log_metrics({f"index_{k}": float(v) for k, v in metrics.items() if v is not None})
        for f in files:
            mlflow.log_artifact(str(f), artifact_path="index")


# --------------------------------------------------------------------------- CLI search
def search_images(params: Params, images: list[str], k: int = 5, index_dir: str | None = None) -> list[dict]:
    """Visual search for image files: ``[{"image": path, "results": [{id, ..., distance}]}]``.

    The embedder is the model in ``index.embedder_dir`` (default ``train.out_dir``); it must produce
    vectors of the index's dimension.
    """
    from fashionops.data.imaging import load_rgb

    if k < 1:
        raise DataError(f"--k must be >= 1, got {k}")
    searcher = IndexSearcher.load(index_dir or params.index.out_dir)
    module, spec = load_embedder(params)
    arrays = []
    for path in images:
        if not Path(path).is_file():
            raise DataError(f"{path}: no such image file")
        arrays.append(load_rgb(path, max_pixels=params.serve.max_pixels, name=str(path)))
    try:
        hits = searcher.search_images(module, spec, arrays, k)
    except DataError as exc:
        raise DataError(f"{params.index.embedder_dir or params.train.out_dir}: {exc}") from exc
    return [{"image": str(p), "results": res} for p, res in zip(images, hits)]
