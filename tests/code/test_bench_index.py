"""benchmarks/bench_index.py end to end on tiny data: the backends side by side, the JSON it writes.

Structure only (which data sets, which backends, which fields, values in range): no test here
asserts a speed or an accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import bench_index
from benchmarks.vectors import clustered_vectors
from fashionops.search.backends import BACKENDS

# every registered backend the benchmark compares (hnsw once it is registered)
UNDER_TEST = [name for name in ("annoy", "hnsw") if name in BACKENDS]


def check_backend(res: dict, rescore: int) -> None:
    """One backend's results: tuned knobs, recall in [0, 1], latency, memory, re-scoring when asked."""
    assert res["search_k"] >= 10 and res["n_trees"] >= 1
    assert isinstance(res["target_reached"], bool) and res["trials"]
    for key in ("recall_at_10", "recall_at_10_vs_raw_exact", "tuned_recall_at_10"):
        assert 0.0 <= res[key] <= 1.0, key
    assert 0 < res["query_p50_ms"] <= res["query_p99_ms"]
    assert res["build_s"] > 0 and res["tune_total_s"] >= res["build_s"]
    assert res["index_size_mb"] > 0 and res["load_s"] >= 0
    for key in ("peak_rss_delta_mb", "loaded_rss_delta_mb", "loaded_rss_delta_after_queries_mb"):
        assert isinstance(res[key], float), key
    held = res["held_out"]  # the search the held-out queries need for the target
    assert held["search_k"] >= 10 and isinstance(held["reached"], bool) and held["trials"]
    assert 0.0 <= held["recall_at_10"] <= 1.0 and 0 < held["query_p50_ms"] <= held["query_p99_ms"]
    if rescore:
        assert res["rescore"]["candidates"] == rescore
        assert res["rescore"]["search_k"] >= rescore
        assert 0.0 <= res["rescore"]["recall_at_10_vs_raw_exact"] <= 1.0
        assert 0 < res["rescore"]["query_p50_ms"] <= res["rescore"]["query_p99_ms"]
    else:
        assert "rescore" not in res


def test_backends_side_by_side_on_every_data_set(tmp_path: Path) -> None:
    embeddings = tmp_path / "embeddings.npy"  # stands in for models/index/embeddings.npy
    np.save(embeddings, clustered_vectors(600, 64, n_clusters=20, seed=3))
    out = tmp_path / "index.json"
    out.write_text(json.dumps({"kept_dim16": {"name": "an earlier data set"}}))
    backends = ",".join(UNDER_TEST)

    argv = f"--n 2000 --index-dim 16 --generators densified,clustered --backend {backends} --queries 50"
    argv += " --target 0.9 --rescore 20 --build-threads 1"
    assert bench_index.main([*argv.split(), "--embeddings-npy", str(embeddings), "--out", str(out)]) == 0

    results = json.loads(out.read_text())
    assert results["kept_dim16"] == {"name": "an earlier data set"}  # merged per data set
    assert "load_avg_1m_at_start" in results["machine"]
    for key, n in (("real_dim16", 550), ("densified_2000_dim16", 2000), ("synthetic_2000_dim16", 2000)):
        res = results[key]
        assert (res["n"], res["dim"], res["index_dim"], res["n_held_out_queries"]) == (n, 64, 16, 50)
        assert res["backends"] == UNDER_TEST
        assert res["recall_target"] == res["targets"]["recall_at_10"] == 0.9
        assert res["query_threads"] == 1 and res["build_threads"] == 1
        assert res["exact"]["exact_p50_ms"] > 0
        for name in UNDER_TEST:
            check_backend(res[name], rescore=20)
    assert "embeddings.npy" in results["real_dim16"]["source"]
    assert "densified_vectors" in results["densified_2000_dim16"]["generator"]

    # a second run without re-scoring replaces its own data set and keeps the others
    argv = f"--skip-real --n 2000 --dim 64 --index-dim 16 --generators clustered --backend {UNDER_TEST[-1]}"
    assert bench_index.main([*argv.split(), "--queries", "50", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["synthetic_2000_dim16"]["backends"] == [UNDER_TEST[-1]]
    assert results["synthetic_2000_dim16"]["recall_target"] == 0.90  # the synthetic sets' default
    check_backend(results["synthetic_2000_dim16"][UNDER_TEST[-1]], rescore=0)
    assert set(results) >= {"kept_dim16", "real_dim16", "densified_2000_dim16"}


@pytest.mark.parametrize("argv", [["--backend", "annoy,nope"], ["--generators", "gaussian"], ["--rescore", "-1"]])
def test_bad_arguments_are_refused(argv: list[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        bench_index.main([*argv, "--skip-real", "--out", str(tmp_path / "x.json")])
    assert not (tmp_path / "x.json").exists()
