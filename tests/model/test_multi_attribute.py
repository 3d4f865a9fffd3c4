"""Multi-attribute tagging, training side (issue #17): ``prepare.labels`` -> one backbone, one head
per attribute -> every head's test metrics.

On the real 300-image catalogue (its own styles.csv with a few ``season`` values blanked and a few
``usage`` values made rare), ``small_cnn`` at a reduced input size, one short epoch: prepare keeps
the single-label split and marks missing/rare values ``-1``; training builds and saves the extra
heads (in the order of ``prepare.labels``) and weighs their losses; evaluate reports every head;
a single-label run is exactly as before (no ``attributes`` in the spec, the same metric names).
The prepare and loss tests take seconds; the three that train and evaluate twice are ``slow``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import SMALL_CNN_TRAIN, params_for

LABELS = "prepare.labels=[articleType,season,gender,usage]"  # not alphabetical: the heads keep this order
TINY = SMALL_CNN_TRAIN + ["prepare.workers=1", "train.epochs=1", "train.limit_batches=3"]
BLANK_SEASON = 4  # rows whose season is blanked
RARE_USAGE = 3  # rows whose usage becomes a value too rare for a head


@pytest.fixture(autouse=True)
def _no_leaked_tracking_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory, small_catalogue, shared_styles) -> Path:
    """The small real catalogue's images (symlinked) with every column from the real styles.csv,
    a few seasons blanked and a few usages made rare."""
    ids = pd.read_csv(small_catalogue / "styles.csv")["id"]
    styles = shared_styles.set_index("id").loc[ids].reset_index()
    styles.loc[: BLANK_SEASON - 1, "season"] = None
    styles.loc[BLANK_SEASON : BLANK_SEASON + RARE_USAGE - 1, "usage"] = "Travel"
    dest = tmp_path_factory.mktemp("multi_catalogue")
    (dest / "images").symlink_to(small_catalogue / "images", target_is_directory=True)
    styles.to_csv(dest / "styles.csv", index=False)
    return dest


@pytest.fixture(scope="module")
def mlflow_db(tmp_path_factory) -> Path:
    """One SQLite store for both runs (creating a store costs seconds)."""
    return tmp_path_factory.mktemp("multi_mlflow")


def _prepare(work: Path, catalogue: Path, db: Path, extra: list[str]):
    """The prepare stage in ``work``; returns the params (paths under ``work``, MLflow in ``db``)."""
    from fashionops.data.prepare import run_prepare

    store = [f"tracking.tracking_uri=sqlite:///{db / 'mlflow.db'}", f"tracking.artifact_location={db / 'artifacts'}"]
    params = params_for(work, catalogue, TINY + store + extra)
    run_prepare(params.prepare, params.paths)
    return params


def _train_and_evaluate(params):
    from fashionops.evaluation.stage import run_evaluate
    from fashionops.training.stage import run_train

    run_train(params.train, params.paths, params.tracking, balance=params.prepare.balance, run_config=params.flat())
    run_evaluate(params.evaluate, params.paths, params.tracking)
    return params


@pytest.fixture(scope="module")
def prepared_single(tmp_path_factory, catalogue, mlflow_db):
    return _prepare(tmp_path_factory.mktemp("single"), catalogue, mlflow_db, [])


@pytest.fixture(scope="module")
def prepared_multi(tmp_path_factory, catalogue, mlflow_db):
    return _prepare(tmp_path_factory.mktemp("multi"), catalogue, mlflow_db, [LABELS])


@pytest.fixture(scope="module")
def single(prepared_single):
    return _train_and_evaluate(prepared_single)


@pytest.fixture(scope="module")
def multi(prepared_multi):
    return _train_and_evaluate(prepared_multi)


def _index(params) -> pd.DataFrame:
    return pd.read_parquet(Path(params.paths.prepared_dir) / "index.parquet")


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_prepare_keeps_the_single_label_split_and_ignores_missing_or_rare_values(
    prepared_single, prepared_multi, catalogue
):
    single, multi = prepared_single, prepared_multi
    one, many = _index(single), _index(multi)
    primary = list(one.columns)
    assert many[primary].equals(one)  # same rows, ids, labels and split: a fair comparison
    one_dir, many_dir = Path(single.paths.prepared_dir), Path(multi.paths.prepared_dir)
    assert (one_dir / "images.npy").read_bytes() == (many_dir / "images.npy").read_bytes()
    assert _json(one_dir / "labels.json").keys() == {"column", "classes"}

    labels = _json(many_dir / "labels.json")
    assert list(labels["attributes"]) == ["season", "gender", "usage"]
    styles = pd.read_csv(catalogue / "styles.csv").set_index("id")
    for attribute, classes in labels["attributes"].items():
        assert classes == sorted(classes)
        values = styles.loc[many["id"], attribute]
        idx = many[f"{attribute}_idx"].to_numpy()
        known = values.isin(classes).to_numpy()
        assert (idx[~known] == -1).all() and (idx[known] >= 0).all(), attribute
        assert [classes[i] for i in idx[known]] == list(values[known])
    blank = styles["season"].isna()
    assert (many.set_index("id").loc[blank[blank].index, "season_idx"] == -1).all()
    assert "Travel" not in labels["attributes"]["usage"]  # 3 images: too rare for the head

    summary = _json(multi.paths.reports("prepare") / "summary.json")["attributes"]
    assert (
        summary["season"]["ignored"]["train"]
        + summary["season"]["ignored"]["val"]
        + summary["season"]["ignored"]["test"]
        >= BLANK_SEASON
    )
    assert summary["usage"]["rare_values"]["Travel"] <= RARE_USAGE
    counts = summary["gender"]["class_counts"]
    assert sum(sum(c.values()) for c in counts.values()) + sum(summary["gender"]["ignored"].values()) == len(many)


@pytest.mark.slow
def test_training_builds_every_head_in_order_and_logs_its_metrics(multi):
    from fashionops.models.factory import load_model

    model_dir = Path(multi.paths.classifier_dir)
    module, spec = load_model(model_dir)
    labels = _json(Path(multi.paths.prepared_dir) / "labels.json")
    assert spec.attributes == labels["attributes"] and list(spec.attributes) == ["season", "gender", "usage"]
    x = torch.zeros(2, 3, *spec.input_size)
    heads = module.attribute_logits(x)
    assert [h.shape[1] for h in heads] == [spec.num_classes, *(len(c) for c in spec.attributes.values())]
    assert torch.equal(heads[0], module(x))  # forward stays the primary's logits

    with (multi.paths.reports("train") / "history.csv").open() as fh:
        columns = next(csv.reader(fh))
    assert {"val_season_acc", "val_gender_macro_f1", "train_usage_loss"} <= set(columns)
    summary = _json(multi.paths.reports("train") / "summary.json")
    assert 0 <= summary["best_val_gender_acc"] <= 1


def test_loss_weights_weigh_each_head_and_an_empty_head_adds_nothing(prepared_multi):
    from fashionops.config import TrainConfig
    from fashionops.models.factory import build_model, model_spec
    from fashionops.training.datamodule import FashionDataModule, load_prepared
    from fashionops.training.lit_module import FashionLitModule

    multi = prepared_multi
    data = load_prepared(multi.paths.prepared_dir)
    spec = model_spec(multi.train, data.classes, data.label_column, data.image_hw, data.attributes)
    assert list(spec.attributes) == ["season", "gender", "usage"]
    module = build_model(spec).eval()  # untrained: the loss arithmetic is what is tested
    dm = FashionDataModule(data, spec, batch_size=16)
    images, y = next(iter(dm.val_dataloader()))
    assert y.shape == (len(images), 4) and y.dtype == torch.int64
    x = dm.transform(images)

    def loss(weights: dict[str, float], target: torch.Tensor = y) -> float:
        lit = FashionLitModule(module, spec, TrainConfig(**{**multi.train.model_dump(), "loss_weights": weights}))
        with torch.no_grad():
            return float(lit._step((x, target), _stats()))

    base = loss({})
    gender = loss({"gender": 3.0}) - base
    with torch.no_grad():
        logits = module.attribute_logits(x)[2]
        lit = FashionLitModule(module, spec, multi.train)
        expected, _ = lit.head_loss(logits, y[:, 2])
    assert gender == pytest.approx(2.0 * float(expected), rel=1e-4)
    with torch.no_grad():
        primary = FashionLitModule(module, spec, multi.train).compute_loss(module(x), x, y[:, 0])
    assert loss({"gender": 0.0, "season": 0.0, "usage": 0.0}) == pytest.approx(float(primary), rel=1e-5)
    ignored = y.clone()
    ignored[:, 1:] = -1  # no known value in the batch: the extra heads add 0, never NaN
    assert loss({}, ignored) == pytest.approx(loss({"gender": 0.0, "season": 0.0, "usage": 0.0}), rel=1e-5)
    with pytest.raises(Exception, match="colour"):
        loss({"colour": 1.0})


def _stats():
    from fashionops.training.lit_module import _EpochStats

    return _EpochStats()


@pytest.mark.slow
def test_evaluate_reports_every_head(multi):
    from fashionops.evaluation.metrics import TEST_HEADLINE, headline_name

    out = multi.paths.reports("evaluate")
    metrics = _json(out / "metrics.json")
    heads = ["season", "gender", "usage"]
    expected = [headline_name(k) for k in TEST_HEADLINE] + [
        f"test/{a}_{k}" for a in heads for k in ("accuracy", "macro_f1")
    ]
    assert set(metrics) <= set(expected) and {f"test/{a}_accuracy" for a in heads} <= set(metrics)
    assert all(name.count("/") == 1 for name in metrics)
    summary = _json(out / "summary.json")
    index = _index(multi)
    test = index[(index["split"] == "test") & ~index["is_copy"]]
    for attribute in heads:
        known = int((test[f"{attribute}_idx"] >= 0).sum())
        assert summary[f"test/{attribute}_n_samples"] == known
        assert summary[f"test/{attribute}_n_excluded"] == len(test) - known
        assert 0 <= summary[f"test/{attribute}_majority_accuracy"] <= 1
        per_class = pd.read_csv(out / f"per_class_{attribute}.csv")
        assert per_class["support"].sum() == known
    table = pd.read_csv(out / "attributes.csv")
    assert list(table["attribute"]) == ["articleType", *heads]
    assert np.isclose(table.loc[1, "accuracy"], metrics["test/season_accuracy"])


@pytest.mark.slow
def test_a_single_label_run_is_unchanged(single):
    from fashionops.evaluation.metrics import TEST_HEADLINE, headline_name
    from fashionops.models.spec import SPEC_FILE
    from fashionops.training.stage import HEADLINE, HISTORY_COLUMNS

    model_dir = Path(single.paths.classifier_dir)
    assert "attributes" not in _json(model_dir / SPEC_FILE)
    from fashionops.models.factory import load_model

    module, spec = load_model(model_dir)
    assert spec.attributes == {} and len(module.attribute_logits(torch.zeros(1, 3, *spec.input_size))) == 1
    assert not any(k.startswith("extra_heads") for k in module.state_dict())
    assert set(_json(single.paths.reports("train") / "metrics.json")) <= set(HEADLINE)
    with (single.paths.reports("train") / "history.csv").open() as fh:
        assert next(csv.reader(fh)) == HISTORY_COLUMNS
    out = single.paths.reports("evaluate")
    names = set(_json(out / "metrics.json"))
    assert {"test/accuracy", "test/macro_f1"} <= names <= {headline_name(k) for k in TEST_HEADLINE}
    assert not any(k.startswith("test/") and "_majority" in k for k in _json(out / "summary.json"))
    assert not (out / "attributes.csv").exists()
