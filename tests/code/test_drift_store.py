"""The observation log under concurrent writers: threads and processes appending at once lose
nothing; image facts and the projection are what the docs say (real catalogue images)."""

from __future__ import annotations

import multiprocessing
import threading
from pathlib import Path

import numpy as np
import pytest

from fashionops.config_operations import MonitorConfig

ROWS_PER_APPEND = 5
APPENDS = 15


def _images(catalogue: Path, n: int) -> list[np.ndarray]:
    from fashionops.data.imaging import load_rgb

    return [load_rgb(p) for p in sorted((catalogue / "images").glob("*.jpg"))[:n]]


def _append_many(store: str, source: str, images: list[np.ndarray]) -> None:
    from fashionops.monitoring import record_observations

    cfg = MonitorConfig(store=store, projection_dim=8)
    rng = np.random.default_rng(abs(hash(source)) % 2**32)
    for i in range(APPENDS):
        n = record_observations(
            cfg,
            images=images,
            probabilities=rng.dirichlet(np.ones(4), len(images)),
            classes=["a", "b", "c", "d"],
            embeddings=rng.standard_normal((len(images), 32)),
            source=source,
            model_version="1",
            item_ids=[f"{source}-{i}-{j}" for j in range(len(images))],
        )
        assert n == len(images)


@pytest.fixture(scope="module")
def images(shared_catalogue):
    return _images(shared_catalogue, ROWS_PER_APPEND)


def test_concurrent_threads_and_processes_lose_nothing(tmp_path, images):
    from fashionops.monitoring.store import load_window

    store = str(tmp_path / "log" / "observations.sqlite")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(store, f"proc{k}", images)) for k in range(3)]
    threads = [threading.Thread(target=_append_many, args=(store, f"thread{k}", images)) for k in range(4)]
    for w in procs + threads:
        w.start()
    for t in threads:
        t.join()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    rows = load_window(store)
    writers = 7
    assert len(rows) == writers * APPENDS * ROWS_PER_APPEND
    assert rows["item_id"].is_unique and rows["id"].is_unique
    # each append is one transaction: its rows are contiguous and share one timestamp
    rows["append"] = rows["item_id"].str.rsplit("-", n=1).str[0]
    for _, group in rows.groupby("append"):
        assert len(group) == ROWS_PER_APPEND and group["ts"].nunique() == 1
        assert group["id"].max() - group["id"].min() == ROWS_PER_APPEND - 1
    assert load_window(store, last=10, source="proc1")["source"].eq("proc1").sum() == 10


def test_facts_and_projection(images):
    from fashionops.monitoring.facts import image_facts
    from fashionops.monitoring.projection import project

    grey = np.full((40, 30, 3), 100, dtype=np.uint8)
    f = image_facts(grey)
    assert (f.height, f.width) == (40, 30) and f.brightness == pytest.approx(100, abs=0.01)
    assert f.colourfulness == pytest.approx(0) and f.contrast == pytest.approx(0)
    real = image_facts(images[0])
    dark = image_facts((images[0] * 0.5).astype(np.uint8))
    assert dark.brightness < real.brightness * 0.55 and dark.colourfulness < real.colourfulness
    emb = np.random.default_rng(0).standard_normal((3, 64))
    a, b = project(emb, 16), project(emb * 7.0, 16)  # L2-normalised first: scale does not matter
    assert a.shape == (3, 16) and np.allclose(a, b, atol=1e-5)
    assert np.array_equal(project(emb, 16), a)  # fixed: the same in every process


def test_since_filter_and_bad_since(tmp_path, images):
    from fashionops.errors import FashionOpsError
    from fashionops.monitoring.store import load_window

    store = str(tmp_path / "o.sqlite")
    _append_many(store, "score", images[:1])
    assert len(load_window(store, since="2000-01-01T00:00")) == APPENDS
    assert len(load_window(store, since="2999-01-01")) == 0
    with pytest.raises(FashionOpsError, match="not an ISO time"):
        load_window(store, since="yesterday")
    with pytest.raises(FashionOpsError, match="no observation log"):
        load_window(str(tmp_path / "missing.sqlite"))
