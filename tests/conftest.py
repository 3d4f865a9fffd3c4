"""Shared fixtures: real subsets of the catalogue in ../shared/data, never mocks."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FASHION_DATA", REPO.parent / "shared" / "data" / "fashion-product-images-small"))


def pytest_collection_modifyitems(config, items):
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
    skip_net = pytest.mark.skip(reason="needs the internet; never run in CI")
    for item in items:
        if "network" in item.keywords:
            item.add_marker(skip_net)


@pytest.fixture(scope="session")
def shared_catalogue() -> Path:
    """The real catalogue (styles.csv + images/); tests fail loudly if it is missing."""
    assert (SHARED_DATA / "styles.csv").is_file(), f"real data not found at {SHARED_DATA}"
    return SHARED_DATA


@pytest.fixture(scope="session")
def shared_styles(shared_catalogue: Path) -> pd.DataFrame:
    return pd.read_csv(shared_catalogue / "styles.csv", dtype={"year": "Int64"})


def make_subset(
    src: Path, dest: Path, styles: pd.DataFrame, per_class: int, classes: int, label: str = "articleType", seed: int = 0
) -> Path:
    """Copy a real subset: `per_class` images of each of the `classes` largest classes."""
    top = styles[label].value_counts().index[:classes]
    chosen = styles[styles[label].isin(top)]
    rows = chosen.groupby(label).sample(n=min(per_class, int(chosen[label].value_counts().min())), random_state=seed)
    (dest / "images").mkdir(parents=True, exist_ok=True)
    for image_id in rows["id"]:
        shutil.copyfile(src / "images" / f"{image_id}.jpg", dest / "images" / f"{image_id}.jpg")
    rows.to_csv(dest / "styles.csv", index=False)
    return dest


@pytest.fixture(scope="session")
def small_catalogue(tmp_path_factory, shared_catalogue, shared_styles) -> Path:
    """A real 300-image catalogue: 30 images of each of the 10 largest article types (read-only)."""
    dest = tmp_path_factory.mktemp("small_catalogue")
    return make_subset(shared_catalogue, dest, shared_styles, per_class=30, classes=10)


# A tiny model that trains in seconds on a small real subset (the subprocess train tests).
SMALL_CNN_TRAIN = [
    "prepare.min_images_per_class=10",
    "train.backbone=small_cnn",
    "train.pretrained=none",
    "train.input_height=48",
    "train.input_width=36",
    "train.batch_size=16",
    "train.lr=0.003",
    "train.num_workers=0",
]


@pytest.fixture
def no_leaked_tracking_uri(monkeypatch):
    """An MLFLOW_TRACKING_URI left by an earlier test must not redirect the params' own store."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def mlflow_runs(params) -> dict[str, str]:
    """run id -> status of every run in the params' MLflow experiment."""
    from mlflow.tracking import MlflowClient

    from fashionops.tracking import tracking_uri

    client = MlflowClient(tracking_uri(params.tracking))
    exp = client.get_experiment_by_name(params.tracking.experiment)
    return {r.info.run_id: r.info.status for r in client.search_runs([exp.experiment_id])} if exp else {}


def params_for(workdir: Path, catalogue: Path | None = None, overrides: list[str] | None = None):
    """Params whose every path lies under `workdir` (absolute), with a SQLite MLflow store there.

    `catalogue` is used as the raw data directory as-is (the import stage is not needed).
    """
    from fashionops.config import load_params

    w = Path(workdir)
    raw = str(catalogue) if catalogue else str(w / "data/raw")
    paths = [
        f"paths.raw_dir={raw}",
        f"paths.gx_dir={REPO / 'gx'}",
        f"paths.facts={w / 'data/validated/image_facts.parquet'}",
        f"paths.prepared_dir={w / 'data/prepared'}",
        f"paths.classifier_dir={w / 'models/classifier'}",
        f"paths.index_dir={w / 'models/index'}",
        f"paths.reports_dir={w / 'reports'}",
        f"tracking.tracking_uri=sqlite:///{w / 'mlflow/mlflow.db'}",
        f"tracking.artifact_location={w / 'mlflow/artifacts'}",
    ]
    return load_params(REPO / "params.yaml", paths + list(overrides or []))


def train_command(params, overrides: list[str], resume: bool = False) -> list[str]:
    """`python -m fashionops.cli train` (what DVC's stage runs) with `overrides`, then `params`'
    prepared, classifier and reports paths and its MLflow store (a subprocess sees no fixtures)."""
    cmd = [sys.executable, "-m", "fashionops.cli", "train", "--params", str(REPO / "params.yaml")]
    if resume:
        cmd.append("--resume")
    for item in [
        *overrides,
        f"paths.prepared_dir={params.paths.prepared_dir}",
        f"paths.classifier_dir={params.paths.classifier_dir}",
        f"paths.reports_dir={params.paths.reports_dir}",
        f"tracking.tracking_uri={params.tracking.tracking_uri}",
        f"tracking.artifact_location={params.tracking.artifact_location}",
    ]:
        cmd += ["--set", item]
    return cmd


# Small and fast: 10 classes of 30 real images, one short epoch of the default backbone.
TINY_TRAIN = [
    "prepare.min_images_per_class=10",
    "train.epochs=1",
    "train.batch_size=32",
    "index.n_trees=10",
    "index.tune_queries=50",
    "index.retrieval_queries=4",
]


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory, small_catalogue):
    """prepare -> train -> evaluate -> index run once on the small real catalogue; returns Params.

    Read-only for tests: copy the outputs if a test must change them.
    """
    from fashionops.data.prepare import run_prepare
    from fashionops.evaluation.stage import run_evaluate
    from fashionops.search.stage import run_index
    from fashionops.training.stage import run_train

    work = tmp_path_factory.mktemp("tiny_pipeline")
    params = params_for(work, small_catalogue, TINY_TRAIN)
    run_prepare(params.prepare, params.paths)
    run_train(params.train, params.paths, params.tracking, balance=params.prepare.balance, run_config=params.flat())
    run_evaluate(params.evaluate, params.paths, params.tracking)
    run_index(params.index, params.paths, params.tracking, label=params.prepare.label)
    return params
