"""prepare stage on real catalogue subsets: cache contract, filtering, duplicate-aware split,
balancing, determinism and error handling."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import params_for
from fashionops.config import ConfigError
from fashionops.data.imaging import load_rgb, resize_rgb
from fashionops.data.prepare import run_prepare, select_classes, split_groups
from fashionops.errors import DataError

BASE = ["prepare.min_images_per_class=10", "prepare.workers=1"]


def _params(work: Path, catalogue: Path, extra: list[str] | None = None):
    return params_for(work, catalogue, BASE + list(extra or []))


def prepare(params):
    """The stage as the CLI calls it: its section and the paths."""
    return run_prepare(params.prepare, params.paths)


def _derived_catalogue(dest: Path, source: Path, styles: pd.DataFrame) -> Path:
    """A catalogue sharing `source`'s images (symlinked folder) with its own styles.csv."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "images").symlink_to(source / "images", target_is_directory=True)
    styles.to_csv(dest / "styles.csv", index=False)
    return dest


def _load(params):
    out = Path(params.paths.prepared_dir)
    index = pd.read_parquet(out / "index.parquet")
    images = np.load(out / "images.npy", mmap_mode="r")
    labels = json.loads((out / "labels.json").read_text())
    weights = json.loads((out / "class_weights.json").read_text())["weights"]
    summary = json.loads((params.paths.reports("prepare") / "summary.json").read_text())
    return index, images, labels, weights, summary


@pytest.fixture(scope="module")
def small_catalogue(tmp_path_factory, small_catalogue, shared_styles) -> Path:
    """The shared 300-image subset, with its label columns restored from the real styles.csv
    where the subset's styles.csv lost them (pandas 3 groupby.apply drops the grouping column)."""
    styles = pd.read_csv(small_catalogue / "styles.csv")
    if {"masterCategory", "subCategory", "articleType"} <= set(styles.columns):
        return small_catalogue
    full = shared_styles.set_index("id").loc[styles["id"]].reset_index()
    return _derived_catalogue(tmp_path_factory.mktemp("small_catalogue_fixed"), small_catalogue, full)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, small_catalogue):
    params = _params(tmp_path_factory.mktemp("prepared"), small_catalogue)
    result = prepare(params)
    return params, result


def test_outputs_follow_the_contract(prepared, small_catalogue):
    params, result = prepared
    index, images, labels, weights, summary = _load(params)
    styles = pd.read_csv(small_catalogue / "styles.csv")

    assert images.dtype == np.uint8 and images.shape == (len(styles), 80, 60, 3)
    assert list(index.columns) == ["row", "id", "label", "label_idx", "split", "sha256", "source_id", "is_copy"]
    assert index["row"].tolist() == list(range(len(index)))
    assert sorted(index["id"]) == sorted(styles["id"])
    assert set(index["split"]) == {"train", "val", "test"}
    assert not index["is_copy"].any() and (index["source_id"] == index["id"]).all()

    assert labels["column"] == "articleType"
    assert labels["classes"] == sorted(styles["articleType"].unique())
    assert (index["label"] == [labels["classes"][i] for i in index["label_idx"]]).all()
    truth = styles.set_index("id")["articleType"]
    assert (index["label"].to_numpy() == truth.loc[index["id"]].to_numpy()).all()
    assert len(weights) == len(labels["classes"])

    # Cached pixels are the shared decoder's pixels (grayscale and odd sizes included).
    for row in index.sample(n=20, random_state=0).itertuples():
        path = small_catalogue / "images" / f"{row.id}.jpg"
        assert np.array_equal(images[row.row], resize_rgb(load_rgb(path), 80, 60)), row.id
    manifest_sha = {
        p.stem: __import__("hashlib").sha256(p.read_bytes()).hexdigest()
        for p in (small_catalogue / "images").glob("*.jpg")
    }
    assert all(manifest_sha[str(i)] == h for i, h in zip(index["id"], index["sha256"]))

    assert summary == result
    assert summary["n_images"] == len(styles)
    assert sum(summary["split_counts"].values()) == len(styles)
    assert summary["images_per_s"] > 0
    assert not list(Path(params.paths.prepared_dir).parent.glob(".prepared.*"))  # no temp left behind


def test_split_is_stratified(prepared):
    params, _ = prepared
    index, *_ = _load(params)
    per_class = index.groupby(["label", "split"]).size().unstack(fill_value=0)
    # 30 images per class -> 24 / 3 / 3 (one off at most when duplicates move a group).
    assert (per_class["train"].between(23, 25)).all(), per_class
    assert (per_class["val"].between(2, 4)).all(), per_class
    assert (per_class["test"].between(2, 4)).all(), per_class


def test_deterministic_for_a_seed_and_across_worker_counts(prepared, tmp_path, small_catalogue):
    params, _ = prepared
    index, images, *_ = _load(params)
    again = _params(tmp_path / "a", small_catalogue, ["prepare.workers=2"])
    prepare(again)
    index2, images2, *_ = _load(again)
    pd.testing.assert_frame_equal(index, index2)
    assert np.array_equal(images, images2)

    other = _params(tmp_path / "b", small_catalogue, ["prepare.seed=7"])
    prepare(other)
    index3, *_ = _load(other)
    assert (index3["split"] != index["split"]).any()


def test_min_images_include_exclude_and_class_weights(tmp_path, small_catalogue):
    styles = pd.read_csv(small_catalogue / "styles.csv")
    classes = sorted(styles["articleType"].unique())
    small, kept = classes[0], classes[1:]
    # Leave `small` with 5 images: below min_images_per_class=10.
    styles = pd.concat([styles[styles["articleType"] != small], styles[styles["articleType"] == small].head(5)])
    # Make one kept class larger than the rest to give unequal weights: drop half of another.
    halved = kept[0]
    styles = pd.concat([styles[styles["articleType"] != halved], styles[styles["articleType"] == halved].head(15)])
    cat = _derived_catalogue(tmp_path / "cat", small_catalogue, styles)

    params = _params(tmp_path / "w", cat)
    summary = prepare(params)
    index, images, labels, weights, _ = _load(params)
    assert labels["classes"] == kept
    assert small in summary["dropped_classes"] and "min_images_per_class" in summary["dropped_classes"][small]
    assert len(images) == len(index) == len(styles) - 5

    train_counts = index[index["split"] == "train"].groupby("label_idx").size()
    expected = train_counts.sum() / (len(kept) * train_counts)
    assert np.allclose(weights, expected.sort_index().to_numpy())
    assert weights[labels["classes"].index(halved)] > weights[labels["classes"].index(kept[1])]

    params = _params(
        tmp_path / "w2",
        cat,
        [f"prepare.include=[{kept[0]!r}, {kept[1]!r}, {kept[2]!r}]", f"prepare.exclude=[{kept[1]!r}]"],
    )
    summary = prepare(params)
    index, _, labels, weights, _ = _load(params)
    assert labels["classes"] == [kept[0], kept[2]]
    assert set(index["label"]) == {kept[0], kept[2]}
    assert summary["dropped_classes"][kept[1]] == "in prepare.exclude"
    assert len(weights) == 2

    with pytest.raises(ConfigError, match="prepare.include"):
        prepare(_params(tmp_path / "w3", cat, ["prepare.include=[NoSuchType]"]))
    with pytest.raises(DataError, match="no articleType class left"):
        prepare(_params(tmp_path / "w4", cat, ["prepare.min_images_per_class=1000"]))


def test_label_column_from_params(tmp_path, small_catalogue):
    params = _params(tmp_path, small_catalogue, ["prepare.label=subCategory", "prepare.min_images_per_class=1"])
    prepare(params)
    index, _, labels, _, _ = _load(params)
    styles = pd.read_csv(small_catalogue / "styles.csv").set_index("id")
    assert labels == {"column": "subCategory", "classes": sorted(styles["subCategory"].unique())}
    assert (index["label"].to_numpy() == styles.loc[index["id"], "subCategory"].to_numpy()).all()


def test_oversample_reaches_target_with_augmented_train_copies(prepared, tmp_path, small_catalogue):
    target = 40
    params = _params(tmp_path, small_catalogue, ["prepare.balance=oversample", f"prepare.oversample_target={target}"])
    summary = prepare(params)
    index, images, labels, weights, _ = _load(params)
    base_index, base_images, *_ = _load(prepared[0])

    originals = index[~index["is_copy"]].reset_index(drop=True)
    pd.testing.assert_frame_equal(originals, base_index)  # oversampling never changes the split
    assert np.array_equal(images[: len(base_images)], base_images)

    train = index[index["split"] == "train"]
    assert (train.groupby("label").size() == target).all()
    copies = index[index["is_copy"]]
    assert summary["n_copies"] == len(copies) > 0 and len(images) == len(index)
    assert (copies["split"] == "train").all()
    assert copies["id"].is_unique and (copies["id"] < 0).all()
    source = base_index.set_index("id").loc[copies["source_id"]]
    assert (source["split"] == "train").all()
    assert (source["label"].to_numpy() == copies["label"].to_numpy()).all()
    assert (source["sha256"].to_numpy() == copies["sha256"].to_numpy()).all()
    # Augmented: same shape, different pixels from their source.
    changed = [not np.array_equal(images[r], base_images[s]) for r, s in zip(copies["row"], source["row"])]
    assert all(changed)
    assert np.allclose(weights, 1.0)  # balanced train counts -> equal weights


def test_byte_identical_images_under_different_ids_share_a_split(tmp_path, small_catalogue):
    styles = pd.read_csv(small_catalogue / "styles.csv")
    cat = tmp_path / "cat"
    shutil.copytree(small_catalogue, cat)
    # 60 copies of 60 different images under new ids; every 5th copy also relabelled.
    originals = styles.sample(n=60, random_state=1)
    copies = originals.copy()
    copies["id"] = np.arange(9_000_000, 9_000_060)
    other = sorted(styles["articleType"].unique())
    copies.loc[copies.index[::5], "articleType"] = [
        other[(other.index(t) + 1) % len(other)] for t in copies["articleType"].iloc[::5]
    ]
    for src, dst in zip(originals["id"], copies["id"]):
        shutil.copyfile(cat / "images" / f"{src}.jpg", cat / "images" / f"{dst}.jpg")
    pd.concat([styles, copies]).to_csv(cat / "styles.csv", index=False)

    params = _params(tmp_path / "w", cat)
    summary = prepare(params)
    index, *_ = _load(params)
    assert len(index) == len(styles) + 60
    assert index.groupby("sha256")["split"].nunique().max() == 1
    pair_split = index.set_index("id")["split"]
    assert (pair_split.loc[originals["id"]].to_numpy() == pair_split.loc[copies["id"]].to_numpy()).all()
    assert summary["duplicate_groups"]["groups"] >= 60
    assert summary["duplicate_groups"]["groups_with_mixed_labels"] >= 12


def test_real_catalogue_split_has_no_leakage(shared_catalogue, shared_styles):
    manifest = pd.read_csv(shared_catalogue / "images_manifest.csv", usecols=["id", "sha256"])
    data = shared_styles[["id", "articleType"]].merge(manifest, on="id", validate="one_to_one")
    assert len(data) == len(shared_styles)
    assert data["sha256"].duplicated().sum() > 500  # the real catalogue's duplicate groups

    split = split_groups(data["articleType"], data["sha256"], (0.8, 0.1, 0.1), seed=42)
    data["split"] = split
    assert data.groupby("sha256")["split"].nunique().max() == 1
    fractions = data["split"].value_counts(normalize=True)
    assert abs(fractions["train"] - 0.8) < 0.01
    assert abs(fractions["val"] - 0.1) < 0.01 and abs(fractions["test"] - 0.1) < 0.01
    # Stratified: every class with >= 100 images is within 3 points of 80/10/10.
    counts = data["articleType"].value_counts()
    big = data[data["articleType"].isin(counts[counts >= 100].index)]
    per_class = pd.crosstab(big["articleType"], big["split"], normalize="index")
    assert (per_class["train"] - 0.8).abs().max() < 0.03, per_class
    assert (per_class["test"] - 0.1).abs().max() < 0.03, per_class

    assert (split_groups(data["articleType"], data["sha256"], (0.8, 0.1, 0.1), seed=42) == split).all()
    assert (split_groups(data["articleType"], data["sha256"], (0.8, 0.1, 0.1), seed=1) != split).any()


def test_select_classes_on_real_counts(shared_styles):
    kept, dropped = select_classes(shared_styles["articleType"], 100)
    counts = shared_styles["articleType"].value_counts()
    assert kept == sorted(counts[counts >= 100].index)
    assert set(dropped) == set(counts[counts < 100].index)


def test_bad_image_is_a_data_error_naming_the_file(tmp_path, small_catalogue, prepared):
    cat = tmp_path / "cat"
    shutil.copytree(small_catalogue, cat)
    victim = sorted((cat / "images").glob("*.jpg"))[7]
    victim.write_bytes(victim.read_bytes()[:-40])  # truncated
    params = _params(tmp_path / "w", cat, ["prepare.workers=2"])  # error raised in a worker process
    # An earlier good output must survive a failed run untouched.
    shutil.copytree(Path(prepared[0].paths.prepared_dir), params.paths.prepared_dir)
    before = (Path(params.paths.prepared_dir) / "index.parquet").read_bytes()
    with pytest.raises(DataError, match=victim.name):
        prepare(params)
    assert (Path(params.paths.prepared_dir) / "index.parquet").read_bytes() == before
    assert not list(Path(params.paths.prepared_dir).parent.glob(".prepared.*"))


def test_split_fractions_must_sum_to_one(tmp_path, small_catalogue):
    params = _params(tmp_path, small_catalogue, ["prepare.split.train=0.7"])
    with pytest.raises(ConfigError, match="sum to 1"):
        prepare(params)
