"""Visual-search quality features: category re-ranking, mirror-image encoding, densified benchmark vectors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from benchmarks.vectors import clustered_vectors, densified_vectors
from fashionops.errors import DataError
from fashionops.inference.predictor import Predictor
from fashionops.models.spec import ModelSpec
from fashionops.search.backends import get_backend
from fashionops.search.exact import exact_knn
from fashionops.search.rerank import rerank_by_category
from fashionops.search.searcher import IndexSearcher
from fashionops.search.store import CLASS_PROBS_FILE, write_index_dir
from fashionops.search.vectors import l2_normalise

TYPES = ["Tshirts", "Shirts", "Watches", "Heels"]


# --------------------------------------------------------------------------- rerank_by_category
def test_probable_category_overtakes_a_slightly_closer_item():
    sim = np.array([0.95, 0.94, 0.60])
    cls = np.array([1, 0, 0])
    probs = np.array([0.9, 0.1])
    order = rerank_by_category(sim, cls, probs, 2, weight=1.0, knn_weight=0.0)
    # 0.94 + 0.9 > 0.60 + 0.9 > 0.95 + 0.1: the probable category first, by similarity within it
    assert order.tolist() == [1, 2, 0]
    assert rerank_by_category(sim, cls, probs, 2, weight=0.0).tolist() == [0, 1, 2]  # weight 0: plain order
    # a category the model does not know gets no bonus
    half = np.array([0.5, 0.5])
    assert rerank_by_category(np.array([0.95, 0.90]), np.array([0, 1]), half, 2, knn_weight=0.0).tolist() == [0, 1]
    assert rerank_by_category(np.array([0.95, 0.90]), np.array([-1, 1]), half, 2, knn_weight=0.0).tolist() == [1, 0]


def test_neighbour_vote_without_probabilities():
    # the query's nearest neighbours are mostly category 1: a category-1 item further down moves up
    sim = np.array([0.99, 0.98, 0.97, 0.90, 0.89])
    cls = np.array([1, 1, 0, 0, 1])
    order = rerank_by_category(sim, cls, None, 2, weight=1.0, knn_neighbours=3)
    assert order.tolist() == [0, 1, 4, 2, 3]
    # the vote is similarity-weighted: the nearest neighbour's category wins a 1-1 tie
    order = rerank_by_category(np.array([0.99, 0.80, 0.79]), np.array([0, 1, 0]), None, 2, knn_neighbours=2)
    assert order[:2].tolist() == [0, 2]


def _rerank_index(tmp_path: Path, n: int = 400, dup: bool = True) -> tuple[Path, np.ndarray, np.ndarray]:
    x = clustered_vectors(n, 32, n_clusters=8, seed=4)
    labels = [TYPES[i % 4] for i in range(n)]
    sha = [f"{i:064x}" for i in range(n)]
    if dup:  # item 7 (Heels) is a byte-identical copy of item 2 (Watches)
        x[7] = x[2]
        sha[7] = sha[2]
    items = pd.DataFrame(
        {
            "annoy_idx": np.arange(n),
            "id": np.arange(n) + 100,
            "productDisplayName": [f"item {i}" for i in range(n)],
            "masterCategory": "Apparel",
            "subCategory": "Topwear",
            "articleType": labels,
            "sha256": sha,
        }
    )
    probs = np.full((n, 4), 0.01, dtype=np.float32)
    probs[np.arange(n), np.arange(n) % 4] = 0.97  # a confident, correct classifier
    rerank = {
        "kind": "category",
        "candidates": 30,
        "weight": 1.0,
        "knn_weight": 0.5,
        "knn_neighbours": 10,
        "label_column": "articleType",
        "classes": TYPES,
    }
    meta = {
        "dim": 32,
        "index_dim": 32,
        "metric": "angular",
        "n_trees": 10,
        "search_k": -1,
        "seed": 1,
        "projection": None,
        "flip_tta": True,
        "rerank": rerank,
    }
    out = write_index_dir(
        tmp_path / "idx", x, get_backend("annoy").build(x, "angular", 10, seed=1), items, meta, None, probs
    )
    return out, x, probs


def _precision(hits: list[dict], label: str) -> float:
    return float(np.mean([h["articleType"] == label for h in hits]))


def test_searcher_reranks_and_keeps_exact_copies_first(tmp_path):
    out, x, probs = _rerank_index(tmp_path)
    assert (out / CLASS_PROBS_FILE).is_file()
    searcher = IndexSearcher.load(out)
    assert searcher.flip_tta and searcher.rerank["candidates"] == 30
    # labels are i % 4, unrelated to the clusters: plain neighbours are mixed, re-ranked ones match
    plain = [_precision(searcher.search_by_id(100 + i, 5, rerank=False), TYPES[i % 4]) for i in range(20, 60)]
    ranked = [_precision(searcher.search_by_id(100 + i, 5), TYPES[i % 4]) for i in range(20, 60)]
    assert np.mean(plain) < 0.5 and np.mean(ranked) > 0.95  # (a few have < 5 of their type among 30)
    by_vector = searcher.search(x[[25]], 5, probs[[25]])[0]
    assert by_vector[0]["id"] == 125 and _precision(by_vector, TYPES[1]) == 1.0
    # the copy (another category) still comes first, at distance ~0
    top = searcher.search_by_id(102, 3)
    assert top[0]["id"] == 107 and top[0]["distance"] < 1e-3 and top[0]["articleType"] == "Heels"
    assert [h["articleType"] for h in top[1:]] == ["Watches", "Watches"]
    with pytest.raises(DataError, match="class_probs has 1 rows for 2"):
        searcher.search(x[:2], 5, probs[:1])


def test_searcher_rejects_misaligned_class_probs(tmp_path):
    out, _, _ = _rerank_index(tmp_path, dup=False)
    np.save(out / CLASS_PROBS_FILE, np.zeros((3, 4), dtype=np.float32))
    with pytest.raises(DataError, match="3 rows but items.parquet has 400"):
        IndexSearcher.load(out)
    meta = json.loads((out / "index_meta.json").read_text())
    meta["rerank"]["label_column"] = "colour"
    (out / "index_meta.json").write_text(json.dumps(meta))
    (out / CLASS_PROBS_FILE).unlink()
    with pytest.raises(DataError, match="'colour' is not an item column"):
        IndexSearcher.load(out)


# --------------------------------------------------------------------------- the index's encoding
class _EmbedOnly(torch.nn.Module):
    """Features that depend on left/right (so mirroring matters); no head, like an autoencoder."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(self.conv(x), (2, 2)).flatten(1)


class _Classifier(_EmbedOnly):
    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Linear(8 * 4, 3)

    def embed_with_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.embed(x)
        return f, self.head(f)


def test_encode_with_mirror_image_and_probabilities():
    spec = ModelSpec(backbone="test", input_height=8, input_width=6, mean=[0.5] * 3, std=[0.5] * 3)
    images = np.random.default_rng(0).integers(0, 256, size=(5, 8, 6, 3), dtype=np.uint8)
    mirror = images[:, :, ::-1].copy()
    model = _Classifier().eval()
    predictor = Predictor(model, spec)
    plain = predictor.encode(images, batch_size=2)
    mirrored = predictor.encode(mirror, batch_size=2)
    both = predictor.encode(images, batch_size=2, flip_tta=True, with_probs=True)
    np.testing.assert_allclose(both.embeddings, l2_normalise(plain.embeddings + mirrored.embeddings), atol=1e-5)
    assert not np.allclose(plain.embeddings, both.embeddings, atol=1e-3)  # the mirror image did count
    assert plain.class_probs is None and both.class_probs.shape == (5, 3)
    # softmax of the mean of both logits
    with torch.no_grad():

        def logits(a: np.ndarray) -> torch.Tensor:
            x = torch.from_numpy(a).permute(0, 3, 1, 2).float().div(255).sub(0.5).div(0.5)
            return model.embed_with_logits(x)[1]

        want = torch.softmax((logits(images) + logits(mirror)) / 2, 1).numpy()
    np.testing.assert_allclose(both.class_probs, want, atol=1e-5)
    # a model without a head (an autoencoder) gives no probabilities
    assert Predictor(_EmbedOnly().eval(), spec).encode(images, with_probs=True).class_probs is None


class _ForwardClassifier(_Classifier):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


def test_classifier_mirror_tta_is_the_mean_of_both_logits_eager_and_traced():
    images = np.random.default_rng(1).integers(0, 256, size=(5, 8, 6, 3), dtype=np.uint8)
    mirror = images[:, :, ::-1].copy()
    model = _ForwardClassifier().eval()
    plain = ModelSpec(
        backbone="test",
        input_height=8,
        input_width=6,
        mean=[0.5] * 3,
        std=[0.5] * 3,
        classes=["a", "b", "c"],
        num_classes=3,
    )
    tta = plain.model_copy(update={"flip_tta": True})
    with torch.no_grad():

        def logits(a: np.ndarray) -> torch.Tensor:
            x = torch.from_numpy(a).permute(0, 3, 1, 2).float().div(255).sub(0.5).div(0.5)
            return model(x)

        want = torch.softmax((logits(images) + logits(mirror)) / 2, 1).numpy()
    predictor = Predictor(model, tta)
    np.testing.assert_allclose(predictor.predict_proba(images, batch_size=2), want, atol=1e-5)
    # an image and its mirror image get the same answer; without TTA they do not
    np.testing.assert_allclose(predictor.predict_proba(mirror), predictor.predict_proba(images), atol=1e-5)
    untouched = Predictor(model, plain)
    assert not np.allclose(untouched.predict_proba(mirror), untouched.predict_proba(images), atol=1e-4)
    answers = predictor.classify(images, k=2)
    assert [a["probability"] for a in answers] == pytest.approx(want.max(1).tolist(), abs=1e-5)
    traced = predictor.compiled(["forward"], channels_last=True)
    assert traced.is_scripted
    np.testing.assert_allclose(traced.predict_proba(images), want, atol=1e-4)


# --------------------------------------------------------------------------- densified_vectors
def test_densified_vectors_stay_near_their_anchors():
    anchors = clustered_vectors(500, 32, n_clusters=10, seed=2)
    a = densified_vectors(anchors, 2000, seed=5)
    assert a.shape == (2000, 32) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(a, densified_vectors(anchors, 2000, seed=5))
    assert not np.array_equal(a, densified_vectors(anchors, 2000, seed=6))
    # without noise every point lies between an anchor and its neighbours: nearer an anchor than
    # anchors are to their 10th neighbour; the noise then spreads points off that patch
    _, anchor_spread = exact_knn(anchors, anchors, 10, exclude=np.arange(500))
    _, to_anchor = exact_knn(anchors, densified_vectors(anchors, 2000, noise=0.0, seed=5), 1)
    assert np.median(to_anchor[:, 0]) < 0.6 * np.median(anchor_spread[:, -1])
    _, to_anchor_noisy = exact_knn(anchors, a, 1)
    assert np.median(to_anchor_noisy[:, 0]) > np.median(to_anchor[:, 0])
    with pytest.raises(DataError, match="more than 10 anchors"):
        densified_vectors(anchors[:5], 10)
