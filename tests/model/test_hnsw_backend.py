"""The HNSW backend (``index.backend: hnsw``): build, tuning, save/load, parity with exact search,
distances, refused metrics, determinism, concurrent queries; then the index stage with it and one
query through `fashionops search`, the pyfunc model and the server API."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks.vectors import clustered_vectors
from fashionops.config import IndexConfig
from fashionops.errors import DataError, FashionOpsError
from fashionops.search.backends import AnnIndex, get_backend
from fashionops.search.backends.hnsw import HnswBackend
from fashionops.search.exact import exact_knn, recall_at_k
from fashionops.search.searcher import IndexSearcher
from fashionops.search.stage import configured_backend
from fashionops.search.store import META_FILE, index_files, write_index_dir
from fashionops.search.tuning import tune_index

HNSW = get_backend("hnsw")


def _scaled(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """Vectors of unequal length: euclidean and dot then differ from angular."""
    return (x * np.random.default_rng(seed).uniform(0.5, 2.0, (len(x), 1))).astype(np.float32)


def _items(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "annoy_idx": np.arange(n),
            "id": np.arange(1000, 1000 + n),
            "productDisplayName": [f"item {i}" for i in range(n)],
            "masterCategory": "Apparel",
            "subCategory": "Topwear",
            "articleType": [["Tshirts", "Shirts", "Watches"][i % 3] for i in range(n)],
            "sha256": [f"{i:064x}" for i in range(n)],
        }
    )


# --------------------------------------------------------------------------- the index itself
@pytest.mark.parametrize("metric", ["angular", "euclidean", "dot"])
def test_exhaustive_ef_gives_exact_answers_and_distances(metric):
    x = _scaled(clustered_vectors(2000, 32, n_clusters=20, seed=1))
    index = HNSW.build(x, metric, 8, seed=1)
    rows = np.arange(0, 2000, 20)
    ex_idx, ex_dist = exact_knn(x, x[rows], 10, metric, exclude=rows)
    idx, dist = index.knn(x[rows], 10, 2000, exclude=rows)  # ef = every item
    assert recall_at_k(x, x[rows], idx, ex_dist, metric) == 1.0
    np.testing.assert_array_equal(idx, ex_idx)
    np.testing.assert_allclose(dist, ex_dist, atol=1e-4)  # exact.pairwise_distances' convention
    ids, ds = index.query(x[rows[0]] * 1.5, 10, 2000)  # unnormalised query vector
    e_ids, e_ds = exact_knn(x, x[rows[:1]] * 1.5, 10, metric)
    assert ids == e_ids[0].tolist()
    np.testing.assert_allclose(ds, e_ds[0], atol=1e-4)


def test_small_ef_is_approximate_and_query_item_uses_the_stored_vector():
    x = clustered_vectors(3000, 32, n_clusters=30, seed=2)
    index = HNSW.build(x, "angular", 2, seed=1)
    rows = np.arange(0, 3000, 10)
    _, ex_dist = exact_knn(x, x[rows], 10, exclude=rows)
    low = recall_at_k(x, x[rows], index.knn(x[rows], 10, 10, exclude=rows)[0], ex_dist)
    high = recall_at_k(x, x[rows], index.knn(x[rows], 10, 500, exclude=rows)[0], ex_dist)
    assert low < high  # ef really is the query knob
    ids, ds = index.query_item(77, 5, 200)
    assert ids[0] == 77 and ds[0] < 1e-3
    assert (ids, ds) == index.query(x[77], 5, 200)
    assert index.query(x[77], 5000, 10)[0][:1] == [77]  # more than n asked: all n at most
    assert len(index.query(x[77], 5000, 10)[0]) <= 3000


def test_batched_knn_keeps_the_interface_exclude_semantics():
    x = clustered_vectors(400, 16, n_clusters=8, seed=3)
    index = HNSW.build(x, "angular", 4, seed=2)
    q = x[:50]
    exclude = np.r_[np.arange(25), np.full(25, 399)]  # self for half, an unrelated item for the rest
    for k, sk in ((5, 5), (10, 40), (399, 400), (450, -1)):
        ours = index.knn(q, k, sk, exclude=exclude)
        generic = AnnIndex.knn(index, q, k, sk, exclude=exclude)  # the base class: one query at a time
        np.testing.assert_array_equal(ours[0], generic[0])
        np.testing.assert_array_equal(ours[1], generic[1])
    idx, dist = index.knn(q, 450, 400)
    assert (idx[:, 400:] == -1).all() and np.isinf(dist[:, 400:]).all()  # padded past n


@pytest.mark.parametrize("metric", ["manhattan", "hamming"])
def test_unsupported_metrics_are_refused_by_name(metric):
    x = clustered_vectors(50, 8, n_clusters=3, seed=1)
    with pytest.raises(FashionOpsError, match=rf"index.metric={metric} is not supported by index.backend=hnsw"):
        HNSW.build(x, metric, 8)
    with pytest.raises(FashionOpsError, match=rf"index.metric={metric}"):  # before any embedding
        configured_backend(IndexConfig(backend="hnsw", metric=metric))
    assert HNSW.metrics == ("angular", "euclidean", "dot")


def test_one_thread_build_is_deterministic_for_a_seed(tmp_path):
    x = clustered_vectors(2000, 32, n_clusters=20, seed=4)
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        HNSW.build(x, "angular", 8, seed=seed, n_jobs=1).save(tmp_path / f"{name}.faiss")
    a, b, c = ((tmp_path / f"{n}.faiss").read_bytes() for n in "abc")
    assert a == b
    assert a != c  # the seed drives the graph (the levels items get)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.faiss", "b.faiss", "c.faiss"]  # no temp files


def test_save_load_round_trip_through_the_index_dir(tmp_path):
    x = clustered_vectors(1500, 24, n_clusters=15, seed=5)
    backend = HnswBackend(ef_construction=80)
    built = backend.build(x, "angular", 8, seed=3)
    rows = np.arange(0, 1500, 30)
    before = built.knn(x[rows], 10, 30, exclude=rows)
    meta = {
        "dim": 24,
        "index_dim": 24,
        "backend": "hnsw",
        "metric": "angular",
        "hnsw_m": 8,
        "ef_search": 30,
        "search_k": 30,
        **backend.settings(),
        "seed": 3,
        "recall_k": 10,
        "projection": None,
    }
    out = write_index_dir(tmp_path / "idx", x, built, _items(1500), meta, None)
    assert [p.name for p in index_files(out)] == ["index.faiss", "items.parquet", META_FILE]
    assert json.loads((out / META_FILE).read_text())["ef_construction"] == 80
    searcher = IndexSearcher.load(out)
    assert searcher.index.backend_name == "hnsw" and searcher.index.n_items == 1500
    after = searcher.index.knn(x[rows], 10, 30, exclude=rows)
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_array_equal(before[1], after[1])
    hits = searcher.search(x[[40]], k=3, rerank=False)[0]
    assert hits[0]["id"] == 1040 and hits[0]["distance"] < 1e-3
    assert 1040 not in [h["id"] for h in searcher.search_by_id(1040, k=3)]
    with pytest.raises(FashionOpsError, match="not a 24-d FAISS HNSW index .with row ids. for metric euclidean"):
        backend.load(out / "index.faiss", 24, "euclidean")


def test_threads_with_their_own_ef_get_the_sequential_answers():
    x = clustered_vectors(3000, 32, n_clusters=30, seed=6)
    index = HNSW.build(x, "angular", 3, seed=2)
    queries = _scaled(clustered_vectors(60, 32, n_clusters=30, seed=6), seed=1)
    efs = [10, 20, 40, 80, 160]
    jobs = [(i, ef) for i in range(len(queries)) for ef in efs]
    expected = {job: index.query(queries[job[0]], 10, job[1]) for job in jobs}
    assert any(expected[(i, 10)][0] != expected[(i, 160)][0] for i in range(len(queries)))  # ef matters here
    order = np.random.default_rng(0).permutation(len(jobs))
    shuffled = [jobs[j] for j in order]
    with ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(lambda job: index.query(queries[job[0]], 10, job[1]), shuffled))
        batched = list(pool.map(lambda ef: index.knn(queries, 10, ef), efs * 3))
    assert dict(zip(shuffled, got)) == expected
    for ef, (idx, _) in zip(efs * 3, batched):
        assert idx.tolist() == [expected[(i, ef)][0] for i in range(len(queries))]


# --------------------------------------------------------------------------- tuning (ef and M)
def test_tuning_finds_the_smallest_ef_for_the_target():
    x = clustered_vectors(4000, 48, n_clusters=30, seed=3)
    index, res = tune_index(
        x, "angular", n_trees=4, max_trees=16, k=10, target=0.95, n_queries=200, seed=1, backend="hnsw"
    )
    assert res.reached and res.recall >= 0.95
    assert all(set(t) == {"hnsw_m", "ef_search", "recall"} for t in res.trials)  # honest knob names
    same_m = [t for t in res.trials if t["hnsw_m"] == res.n_trees]
    assert all(t["recall"] < 0.95 for t in same_m if t["ef_search"] < res.search_k)
    # the tuning queries were held out of the build (new to the graph, like a customer's photo):
    # the same one-thread build without them gives the recall the tuner reported ...
    rows = np.sort(np.random.default_rng(1).choice(len(x), size=200, replace=False))
    kept = np.setdiff1d(np.arange(len(x)), rows)
    partial = HnswBackend().build(x[kept], "angular", res.n_trees, 1, rows=kept)
    _, ex_d = exact_knn(x[kept], x[rows], 10, "angular")
    ap, _ = partial.knn(x[rows], 10, res.search_k)
    assert recall_at_k(x, x[rows], ap, ex_d) == pytest.approx(res.recall)
    # ... and they were added afterwards: the index holds every item under its row id
    assert index.n_items == len(x) and index.m == res.n_trees
    assert [index.query_item(int(r), 1, 64)[0][0] for r in rows[:20]] == rows[:20].tolist()


def test_a_partial_build_keeps_row_ids_and_refuses_absent_rows():
    x = clustered_vectors(500, 16, n_clusters=5, seed=6)
    rows = np.arange(0, 500, 2)
    index = HnswBackend().build(x[rows], "angular", 8, 0, rows=rows)
    ids, _ = index.query(x[10], 1, 64)
    assert ids == [10] and index.n_items == len(rows)
    with pytest.raises(DataError, match="row 11 is not in the index"):
        index.query_item(11, 3)
    index.add_rows(x[1::2], np.arange(1, 500, 2))
    assert index.query_item(11, 1, 64)[0] == [11] and index.n_items == 500
    with pytest.raises(FashionOpsError, match="cannot be built over other ids"):
        get_backend("annoy").build(x, rows=np.arange(500))


def test_tuning_doubles_m_when_ef_is_capped():
    x = clustered_vectors(3000, 32, n_clusters=30, seed=4)
    _, res = tune_index(
        x, n_trees=2, max_trees=8, k=10, target=0.999, n_queries=100, seed=2, max_search_k=12, backend="hnsw"
    )
    assert {t["hnsw_m"] for t in res.trials} >= {2, 4}
    assert res.reached == (res.recall >= 0.999)


def test_ef_cap_is_bounded_for_hnsw_only():
    assert HnswBackend().default_max_search_k(1_000_000, 10) == 1024
    assert HnswBackend().default_max_search_k(300, 10) == 1000
    assert get_backend("annoy").default_max_search_k(1_000_000, 10) == 200_000  # Annoy as before


# --------------------------------------------------------------------------- the stage and every query path
@pytest.fixture(scope="module")
def hnsw_index(tiny_pipeline, tmp_path_factory):
    """The index stage with ``index.backend=hnsw`` over the tiny pipeline's model and catalogue, into
    its own index dir, reports and MLflow store (the tiny pipeline's outputs stay as they are)."""
    from fashionops.search.stage import run_index

    work = tmp_path_factory.mktemp("hnsw_index")
    p = tiny_pipeline.model_copy(deep=True)
    p.index.backend = "hnsw"
    p.index.hnsw_m = 4
    p.paths.index_dir = str(work / "models/index")
    p.paths.reports_dir = str(work / "reports")
    p.tracking.tracking_uri = f"sqlite:///{work / 'mlflow/mlflow.db'}"
    p.tracking.artifact_location = str(work / "mlflow/artifacts")
    result = run_index(p.index, p.paths, p.tracking, label=p.prepare.label)
    return p, result


def test_index_stage_writes_an_hnsw_index_dir(hnsw_index):
    p, result = hnsw_index
    out = Path(p.paths.index_dir)
    meta = json.loads((out / META_FILE).read_text())
    assert meta["backend"] == "hnsw" and (out / "index.faiss").is_file() and not (out / "index.ann").exists()
    assert meta["hnsw_m"] >= 4 and meta["ef_construction"] == p.index.hnsw_ef_construction
    assert meta["ef_search"] == meta["search_k"] >= 1 and "n_trees" not in meta
    assert meta["tuned_recall"] >= p.index.recall_target
    assert {"hnsw_m", "ef_search", "recall"} == set(meta["tuning_trials"][0])
    assert result["metrics"]["hnsw_m"] == meta["hnsw_m"] and result["metrics"]["ann_recall_at_10"] >= 0.9


def test_cli_pyfunc_and_server_give_the_same_answer(hnsw_index, tmp_path, monkeypatch, capsys):
    import mlflow
    from fastapi.testclient import TestClient

    from fashionops.cli import main
    from fashionops.config import dump_params
    from fashionops.registry.pyfunc import log_visual_search
    from fashionops.serving.app import create_app
    from fashionops.serving.loader import load_bundle

    p, _ = hnsw_index
    items = pd.read_parquet(Path(p.paths.index_dir) / "items.parquet")
    image = Path(p.paths.raw_dir) / "images" / f"{items['id'].iloc[11]}.jpg"

    params_file = tmp_path / "params.yaml"
    params_file.write_text(dump_params(p))
    assert main(["search", str(image), "--k", "5", "--params", str(params_file)]) == 0
    by_cli = [r["id"] for r in json.loads(capsys.readouterr().out)[0]["results"]]

    store = f"sqlite:///{tmp_path / 'store.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)  # MLflow exports it too; restored after the test
    mlflow.set_tracking_uri(store)
    exp = mlflow.create_experiment("hnsw", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=exp):
        info = log_visual_search(p.paths.index_dir, p.paths.classifier_dir)
    model = mlflow.pyfunc.load_model(info.model_uri)
    out = model.predict(pd.DataFrame({"image": [image.read_bytes()]}), params={"top_k": 5})
    by_pyfunc = [int(i) for i in out["ids"].iloc[0]]

    s = p.model_copy(deep=True)
    s.serve.source, s.serve.jit, s.serve.reload_poll_s = "local", False, 0.0
    monkeypatch.delenv(s.serve.token_env, raising=False)
    bundle = load_bundle(s)
    with TestClient(create_app(s, bundle=bundle)) as client:
        r = client.post("/search", files={"file": (image.name, image.read_bytes(), "image/jpeg")}, data={"k": "5"})
        assert r.status_code == 200, r.text
        by_api = [x["id"] for x in r.json()["results"]]
        health = client.get("/health").json()["index"]
    assert health["backend"] == "hnsw" and health["hnsw_m"] >= 4 and "n_trees" not in health

    assert len(by_cli) == 5 and by_cli == by_pyfunc == by_api
    assert (
        int(image.stem) in by_cli
        or items.set_index("id").loc[by_cli[0], "sha256"] == items.set_index("id").loc[int(image.stem), "sha256"]
    )
