"""ANN index: the backend interface, determinism, recall tuning, bad inputs, duplicates, the stage and
`fashionops search`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from benchmarks.vectors import clustered_vectors
from fashionops.errors import DataError, FashionOpsError
from fashionops.search.backends import BACKENDS, get_backend
from fashionops.search.exact import exact_knn, recall_at_k
from fashionops.search.quality import average_precision_at_k
from fashionops.search.searcher import IndexSearcher
from fashionops.search.store import ITEM_COLUMNS, META_FILE, write_index_dir
from fashionops.search.tuning import tune_index
from fashionops.search.vectors import check_vectors, fit_projection

ANNOY = get_backend("annoy")


def _items(n: int, sha: list[str] | None = None) -> pd.DataFrame:
    types = ["Tshirts", "Shirts", "Watches", "Heels"]
    return pd.DataFrame(
        {
            "annoy_idx": np.arange(n),
            "id": np.arange(1000, 1000 + n),
            "productDisplayName": [f"item {i}" for i in range(n)],
            "masterCategory": "Apparel",
            "subCategory": "Topwear",
            "articleType": [types[i % 4] for i in range(n)],
            "sha256": sha if sha is not None else [f"{i:064x}" for i in range(n)],
        }
    )


def _write(tmp_path: Path, vectors: np.ndarray, items: pd.DataFrame, projection=None, name: str = "idx") -> Path:
    index_vectors = projection.apply(vectors) if projection is not None else vectors
    index = ANNOY.build(index_vectors, "angular", 10, seed=3)
    meta = {
        "dim": vectors.shape[1],
        "index_dim": index_vectors.shape[1],
        "metric": "angular",
        "n_trees": 10,
        "search_k": -1,
        "seed": 3,
        "projection": "projection.npz" if projection is not None else None,
    }
    return write_index_dir(tmp_path / name, vectors, index, items, meta, projection)


def test_exact_knn_matches_naive_search():
    x = clustered_vectors(300, 16, n_clusters=5, seed=1)
    q = x[:7]
    idx, dist = exact_knn(x, q, 5, "angular", exclude=np.arange(7))
    for i in range(7):
        d = np.linalg.norm(x - q[i], axis=1)  # unit vectors: angular distance == euclidean
        d[i] = np.inf
        np.testing.assert_allclose(dist[i], np.sort(d)[:5], atol=1e-5)
        assert i not in idx[i]
    e_idx, e_dist = exact_knn(x, q, 3, "euclidean")
    assert (e_idx[:, 0] == np.arange(7)).all() and np.allclose(e_dist[:, 0], 0, atol=1e-3)


# --------------------------------------------------------------------------- the backend interface
@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_backend_round_trip_matches_exact_search(tmp_path, name):
    backend = get_backend(name)
    x = clustered_vectors(300, 16, n_clusters=5, seed=9)
    built = backend.build(x, "angular", 10, seed=1)
    assert built.backend_name == name and built.n_items == 300
    path = built.save(tmp_path / backend.index_file)
    assert [p.name for p in tmp_path.iterdir()] == [backend.index_file]  # no temp file left
    index = backend.load(path, 16, "angular")
    rows = np.arange(0, 300, 15)
    exhaustive = 300 * 10  # a search budget that covers every item: answers must be exact
    ex_idx, ex_dist = exact_knn(x, x[rows], 5, exclude=rows)
    idx, dist = index.knn(x[rows], 5, exhaustive, exclude=rows)
    np.testing.assert_array_equal(idx, ex_idx)
    np.testing.assert_allclose(dist, ex_dist, atol=1e-4)  # distances in exact search's convention
    by_item, item_dist = index.query_item(int(rows[3]), 6, exhaustive)
    assert by_item[0] == rows[3] and item_dist[0] < 1e-3 and by_item[1:] == ex_idx[3].tolist()
    assert index.query(x[rows[3]], 6, exhaustive)[0] == by_item
    index.unload()
    built.unload()


def test_unknown_backend_is_a_clear_error(tmp_path):
    with pytest.raises(FashionOpsError, match=r"unknown ANN backend 'faiss'; known: annoy"):
        get_backend("faiss")
    x = clustered_vectors(50, 8, n_clusters=3, seed=1)
    out = _write(tmp_path, x, _items(50))
    meta = json.loads((out / META_FILE).read_text())
    assert "backend" not in meta  # index dirs written so far name none: Annoy
    (out / META_FILE).write_text(json.dumps({**meta, "backend": "faiss"}))
    with pytest.raises(FashionOpsError, match="unknown ANN backend 'faiss'"):
        IndexSearcher.load(out)
    with pytest.raises(FashionOpsError, match="unknown ANN backend 'faiss'"):  # nor written under that name
        write_index_dir(
            tmp_path / "other", x, ANNOY.build(x, "angular", 2), _items(50), {**meta, "backend": "faiss"}, None
        )
    assert not (tmp_path / "other").exists()


# --------------------------------------------------------------------------- Annoy and tuning
def test_build_is_deterministic_for_a_seed(tmp_path):
    x = clustered_vectors(2000, 32, n_clusters=20, seed=2)
    ANNOY.build(x, "angular", 8, seed=7).save(tmp_path / "a.ann")
    ANNOY.build(x, "angular", 8, seed=7).save(tmp_path / "b.ann")
    ANNOY.build(x, "angular", 8, seed=8).save(tmp_path / "c.ann")
    a, b, c = ((tmp_path / f"{n}.ann").read_bytes() for n in "abc")
    assert a == b
    assert a != c  # the seed really drives the tree splits
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ann", "b.ann", "c.ann"]  # no temp files left


def test_tuning_reaches_target_with_smallest_search_k():
    x = clustered_vectors(4000, 48, n_clusters=30, seed=3)
    index, res = tune_index(x, "angular", n_trees=4, max_trees=16, k=10, target=0.9, n_queries=200, seed=1)
    assert res.reached and res.recall >= 0.9
    same_trees = [t for t in res.trials if t["n_trees"] == res.n_trees]
    assert all(t["recall"] < 0.9 for t in same_trees if t["search_k"] < res.search_k)
    # measured again, independently of the tuner's bookkeeping, on the same queries
    rows = np.sort(np.random.default_rng(1).choice(len(x), size=200, replace=False))
    _, ex_d = exact_knn(x, x[rows], 10, "angular", exclude=rows)
    ap, _ = index.knn(x[rows], 10, res.search_k, exclude=rows)
    assert recall_at_k(x, x[rows], ap, ex_d) == pytest.approx(res.recall)
    assert index.annoy.get_n_trees() == res.n_trees


def test_tuning_adds_trees_when_search_k_is_capped():
    x = clustered_vectors(3000, 32, n_clusters=30, seed=4)
    _, res = tune_index(x, n_trees=1, max_trees=16, k=10, target=0.95, n_queries=100, seed=2, max_search_k=120)
    assert res.n_trees > 1
    assert res.reached == (res.recall >= 0.95)
    assert {t["n_trees"] for t in res.trials} >= {1, 2}


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((0, 8), dtype=np.float32), "empty"),
        (np.ones(8, dtype=np.float32), "2-D"),
        (np.array([[1.0, np.nan], [0.0, 1.0]], dtype=np.float32), "NaN"),
        (np.array([["a", "b"]]), "numbers"),
    ],
)
def test_bad_vectors_are_rejected(tmp_path, bad, message):
    with pytest.raises(DataError, match=message):
        ANNOY.build(bad).save(tmp_path / "index.ann")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_no_partial_index_dir_and_query_dimension_checked(tmp_path):
    x = clustered_vectors(200, 16, seed=5)
    with pytest.raises(DataError, match="dimension 8 does not match"):
        check_vectors(np.ones((3, 8)), dim=16)
    bad = x.copy()
    bad[5] = np.nan
    with pytest.raises(DataError, match=r"rows \[5\]"):
        _write(tmp_path, bad, _items(200))
    assert not list(tmp_path.iterdir())
    searcher = IndexSearcher.load(_write(tmp_path, x, _items(200)))
    with pytest.raises(DataError, match="dimension 15"):
        searcher.search(np.ones((1, 15), dtype=np.float32))
    with pytest.raises(DataError, match="NaN"):
        searcher.search(np.full((1, 16), np.nan, dtype=np.float32))
    with pytest.raises(DataError, match="not in the index"):
        searcher.search_by_id(1)


def test_searcher_duplicates_first_at_distance_zero_with_projection(tmp_path):
    x = clustered_vectors(500, 64, n_clusters=10, seed=6)
    x[10] = x[20]  # byte-identical images embed identically
    x[30] = x[20]
    sha = [f"{i:064x}" for i in range(500)]
    sha[10] = sha[30] = sha[20]
    proj = fit_projection(x, 16, seed=0)
    searcher = IndexSearcher.load(_write(tmp_path, x, _items(500, sha), proj))
    assert searcher.dim == 64 and list(searcher.items.columns) == ["annoy_idx", *ITEM_COLUMNS]
    res = searcher.search_by_id(1020, k=4)
    assert {r["id"] for r in res[:2]} == {1010, 1030}
    assert all(r["distance"] < 1e-3 for r in res[:2]) and res[2]["distance"] > 1e-3
    assert 1020 not in {r["id"] for r in res}
    hits = searcher.search(x[[20, 40]], k=3)
    assert hits[0][0]["distance"] < 1e-3 and hits[1][0]["id"] == 1040
    assert set(hits[0][0]) == {"id", "productDisplayName", "masterCategory", "subCategory", "articleType", "distance"}
    json.dumps(hits)  # plain Python types


def test_average_precision_at_k():
    assert average_precision_at_k(np.array([1, 0, 1]), 2) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision_at_k(np.array([0, 0, 0]), 5) == 0.0
    assert average_precision_at_k(np.array([1, 1, 1]), 10) == 1.0


# --------------------------------------------------------------------------- on the real pipeline
def test_index_stage_outputs(tiny_pipeline):
    from fashionops.search.stage import HEADLINE

    p = tiny_pipeline
    out, rep = Path(p.paths.index_dir), p.paths.reports("index")
    meta = json.loads((out / "index_meta.json").read_text())
    items = pd.read_parquet(out / "items.parquet")
    emb = np.load(out / "embeddings.npy")
    n_catalogue = len(pd.read_csv(Path(p.paths.raw_dir) / "styles.csv"))
    assert len(items) == n_catalogue == emb.shape[0] == meta["n_items"]  # the whole catalogue
    assert list(items["annoy_idx"]) == list(range(len(items)))
    assert emb.dtype == np.float32 and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-4)
    assert meta["dim"] == emb.shape[1] and meta["tuned_recall"] >= p.index.recall_target
    m = json.loads((rep / "summary.json").read_text())  # every measurement and the tuned settings
    for key in (
        "precision_at_10_article_type",
        "map_at_10_article_type",
        "precision_at_10_subcategory",
        "ann_recall_at_10",
        "duplicate_first_fraction",
    ):
        assert m[key] is None or 0.0 <= m[key] <= 1.0, key
    assert m["ann_recall_at_10"] >= 0.9
    assert m["query_p50_ms"] > 0 and m["index_size_mb"] > 0 and m["build_s"] > 0
    headline = json.loads((rep / "metrics.json").read_text())  # the DVC metrics: HEADLINE's names
    assert headline == {name: pytest.approx(m[key]) for name, key in HEADLINE.items() if m[key] is not None}
    assert headline["index/recall_at_10"] == pytest.approx(m["ann_recall_at_10"])
    with Image.open(rep / "retrieval.png") as im:
        assert im.size[0] > 400 and im.size[1] > 200
    searcher = IndexSearcher.load(out)
    first = items.iloc[0]
    hits = searcher.search(emb[:1], k=3)[0]
    assert hits[0]["distance"] < 1e-3 and (
        hits[0]["id"] == first["id"] or items.set_index("id").loc[hits[0]["id"], "sha256"] == first["sha256"]
    )


def test_search_cli_prints_json(tiny_pipeline, tmp_path, capsys):
    from fashionops.cli import main
    from fashionops.config import dump_params

    params_file = tmp_path / "params.yaml"
    params_file.write_text(dump_params(tiny_pipeline))
    items = pd.read_parquet(Path(tiny_pipeline.paths.index_dir) / "items.parquet")
    image = Path(tiny_pipeline.paths.raw_dir) / "images" / f"{items['id'].iloc[3]}.jpg"
    assert main(["search", str(image), "--k", "3", "--params", str(params_file)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out) == 1 and out[0]["image"] == str(image) and len(out[0]["results"]) == 3
    top = out[0]["results"][0]
    assert top["id"] == int(items["id"].iloc[3]) or top["distance"] < 1e-3
    assert top["distance"] < 1e-2 and {"productDisplayName", "articleType"} <= set(top)
    assert main(["search", str(tmp_path / "missing.jpg"), "--params", str(params_file)]) == 1
    assert "missing.jpg: no such file" in capsys.readouterr().err
