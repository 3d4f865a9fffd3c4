"""Metric names (issue #19): ``<group>/<name>``, the same in the DVC metrics files, MLflow and the
registry's ``metric.<name>`` tags; versions and files written under the old names still read.

Fast: a real MLflow SQLite store in a temp folder and the stages' pure naming functions.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fashionops.data.prepare import headline_metrics as prepare_headline
from fashionops.data.validation.stage import headline_metrics as validate_headline
from fashionops.evaluation.metrics import TEST_HEADLINE, headline_name, raw_metric_key
from fashionops.registry.aliases import canonical_metric_name, legacy_metric_name, version_metric
from fashionops.registry.register import higher_is_better, read_metrics

REPO = Path(__file__).resolve().parents[2]
REPO_PARAMS_METRIC = "test/macro_f1"


def test_selection_metric_default_is_a_headline_name():
    from fashionops.config import RegisterConfig, load_params

    assert RegisterConfig().selection_metric == REPO_PARAMS_METRIC
    assert load_params(REPO / "params.yaml").register.selection_metric == REPO_PARAMS_METRIC
    assert REPO_PARAMS_METRIC in {headline_name(k) for k in TEST_HEADLINE}


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("test_macro_f1", "test/macro_f1"),
        ("test_accuracy", "test/accuracy"),
        ("test/log_loss", "test/log_loss"),
        ("index/recall_at_10", "index/recall_at_10"),
    ],
)
def test_legacy_names_map_to_todays(old, new):
    assert canonical_metric_name(old) == new
    assert legacy_metric_name(new) == new.replace("/", "_")
    if new.startswith("test/"):
        assert raw_metric_key(old) == raw_metric_key(new) == new[len("test/") :]
    assert higher_is_better(new) == higher_is_better(old)
    assert not higher_is_better("test/log_loss") and not higher_is_better("index/query_p50_ms")


def test_read_metrics_takes_old_and_new_files_alike(tmp_path):
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text(json.dumps({"test_macro_f1": 0.5, "test_accuracy": 0.7, "note": "x"}))
    new.write_text(json.dumps({"test/macro_f1": 0.5, "test/accuracy": 0.7}))
    assert read_metrics(old) == read_metrics(new) == {"test/macro_f1": 0.5, "test/accuracy": 0.7}


def test_a_champion_tagged_under_the_old_name_is_read(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("names-test")
    source = str(tmp_path / "model")
    legacy = client.create_model_version("names-test", source, tags={"metric.test_macro_f1": "0.61"})
    current = client.create_model_version("names-test", source, tags={"metric.test/macro_f1": "0.72"})
    both = client.create_model_version(
        "names-test", source, tags={"metric.test/macro_f1": "0.8", "metric.test_macro_f1": "0.1"}
    )
    none = client.create_model_version("names-test", source, tags={"metric.test/accuracy": "0.9"})

    def read(mv):
        return version_metric(client.get_model_version("names-test", mv.version), "test/macro_f1")

    assert read(legacy) == pytest.approx(0.61)
    assert read(current) == pytest.approx(0.72)
    assert read(both) == pytest.approx(0.8)  # today's name wins
    assert read(none) is None


def test_data_headlines_are_namespaced_numbers():
    validation = {
        "passed": True,
        "rows": 10,
        "critical_failures": 0,
        "warnings": 1,
        "duplicate_images": 2,
        "failures": {"image_exists": 0},
        "seconds": {"total": 1.0},
    }
    prepare = {
        "n_images": 9,
        "n_classes": 3,
        "split_originals": {"train": 7, "val": 1, "test": 1},
        "dropped_classes": {"Hat": "3 images < 10"},
        "class_counts": {"train": {"a": 7}},
    }
    for values in (validate_headline(validation), prepare_headline(prepare)):
        for name, value in values.items():
            assert name.count("/") == 1 and type(value) is int, name
    assert validate_headline(validation)["validate/passed"] == 1
    assert validate_headline({**validation, "passed": False})["validate/passed"] == 0
    assert prepare_headline(prepare)["data/dropped_classes"] == 1


def test_per_epoch_curves_are_grouped_in_mlflow():
    from fashionops.training.mlflow_run import curve_name

    assert [curve_name(k) for k in ("train_loss", "val_loss", "val_acc", "val_macro_f1", "lr", "epoch")] == [
        "train/loss",
        "val/loss",
        "val/accuracy",
        "val/macro_f1",
        "train/lr",
        "epoch",
    ]
    assert curve_name("test_acc") == "test_acc"  # test/ names are the evaluate stage's


def test_training_logs_the_learning_rate_once():
    """The per-epoch ``train/lr`` curve is the only learning-rate metric: no LearningRateMonitor
    beside it (it logged the same value again as ``lr-AdamW/pg1`` and ``lr-AdamW/pg2``)."""
    import lightning as L
    from lightning.pytorch.callbacks import LearningRateMonitor
    from lightning.pytorch.loggers import CSVLogger

    from fashionops.training.stage import attach_logger

    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_epochs=1)
    attach_logger(trainer, CSVLogger("/tmp"))
    assert not [cb for cb in trainer.callbacks if isinstance(cb, LearningRateMonitor)]
