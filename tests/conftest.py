"""Shared fixtures: real subsets of the catalogue in ../shared/data, never mocks."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(
    os.environ.get("FASHION_DATA", REPO.parent / "shared" / "data" / "fashion-product-images-small")
)


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
    return pd.read_csv(shared_catalogue / "styles.csv")


def make_subset(src: Path, dest: Path, styles: pd.DataFrame, per_class: int, classes: int,
                label: str = "articleType", seed: int = 0) -> Path:
    """Copy a real subset: `per_class` images of each of the `classes` largest classes."""
    top = styles[label].value_counts().index[:classes]
    rows = (
        styles[styles[label].isin(top)]
        .groupby(label, group_keys=False)
        .apply(lambda g: g.sample(n=min(per_class, len(g)), random_state=seed))
    )
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
