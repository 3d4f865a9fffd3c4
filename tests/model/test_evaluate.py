"""Evaluate: metric functions against sklearn, the stage on the tiny pipeline, `--data` catalogues."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn import metrics as skm

from fashionops.evaluation.metrics import (
    TEST_HEADLINE,
    classification_metrics,
    confusion,
    misclassified_pairs,
    per_class_report,
    specificity_per_class,
)
from fashionops.evaluation.stage import REPORT_FILES


def _random_case(n: int, n_classes: int, seed: int, drop_pred: int | None = None):
    rng = np.random.default_rng(seed)
    y_true = np.concatenate([np.arange(n_classes), rng.integers(0, n_classes, n - n_classes)])
    logits = rng.normal(size=(n, n_classes)) + 2.0 * np.eye(n_classes)[y_true]
    if drop_pred is not None:
        logits[:, drop_pred] -= 100.0  # the model never predicts this class
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y_true, proba.argmax(axis=1), proba


@pytest.mark.parametrize("drop_pred", [None, 2])
def test_metrics_match_sklearn(drop_pred):
    y_true, y_pred, proba = _random_case(200, 5, seed=0, drop_pred=drop_pred)
    if drop_pred is not None:
        assert drop_pred not in y_pred
    m = classification_metrics(y_true, y_pred, proba, 5)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y_true, y_pred))
    for avg in ("macro", "weighted"):
        assert m[f"{avg}_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, average=avg, zero_division=0))
        assert m[f"{avg}_precision"] == pytest.approx(skm.precision_score(y_true, y_pred, average=avg, zero_division=0))
        assert m[f"{avg}_recall"] == pytest.approx(skm.recall_score(y_true, y_pred, average=avg, zero_division=0))
    assert m["roc_auc_ovr"] == pytest.approx(skm.roc_auc_score(y_true, proba, multi_class="ovr", average="macro"))
    onehot = np.eye(5)[y_true]
    assert m["macro_auprc"] == pytest.approx(skm.average_precision_score(onehot, proba, average="macro"))
    assert m["log_loss"] == pytest.approx(skm.log_loss(y_true, proba, labels=range(5)))
    report = per_class_report(y_true, y_pred, list("abcde"))
    p, r, f, s = skm.precision_recall_fscore_support(y_true, y_pred, labels=range(5), zero_division=0)
    by_class = report.set_index("class").loc[list("abcde")]
    np.testing.assert_allclose(by_class["f1"], f)
    np.testing.assert_allclose(by_class["precision"], p)
    np.testing.assert_array_equal(by_class["support"], s)
    if drop_pred is not None:
        assert by_class.loc["c", "precision"] == 0.0 and by_class.loc["c", "recall"] == 0.0


def test_specificity_and_pairs_by_hand():
    y_true = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    y_pred = np.array([0, 1, 1, 1, 2, 2, 2, 2, 0])
    cm = confusion(y_true, y_pred, 3)
    assert cm.tolist() == [[1, 2, 0], [0, 1, 1], [1, 0, 3]]
    # class 0: TN = 9 - 3 (true 0) - 1 (FP: a 2 predicted as 0) = 5 -> 5 / 6
    np.testing.assert_allclose(specificity_per_class(cm), [5 / 6, 5 / 7, 4 / 5])
    pairs = misclassified_pairs(y_true, y_pred, ["a", "b", "c"], top=2)
    assert pairs[["true", "predicted", "count"]].values.tolist() == [["a", "b", 2], ["b", "c", 1]]
    assert pairs["share_of_true"].iloc[0] == pytest.approx(2 / 3)
    m = classification_metrics(y_true, y_pred, None, 3)
    assert m["macro_specificity"] == pytest.approx(np.mean([5 / 6, 5 / 7, 4 / 5]))
    assert "roc_auc_ovr" not in m


def test_class_missing_from_truth_is_not_averaged_into_auc():
    y_true = np.array([0, 0, 1, 1])
    proba = np.array([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.5, 0.4, 0.1]])
    m = classification_metrics(y_true, proba.argmax(1), proba, 3)
    assert m["roc_auc_ovr"] == pytest.approx(1.0)
    assert m["n_classes"] == 2.0 and np.isfinite(m["log_loss"])


def test_evaluate_stage_outputs(tiny_pipeline):
    import mlflow

    from fashionops.tracking import configure, read_run_file

    out = tiny_pipeline.paths.reports("evaluate")
    for name in REPORT_FILES:
        assert (out / name).is_file(), name
    m = json.loads((out / "summary.json").read_text())  # every score and count
    assert all(k.startswith("test/") for k in m)
    for key in (
        "test/accuracy",
        "test/balanced_accuracy",
        "test/macro_f1",
        "test/weighted_f1",
        "test/macro_precision",
        "test/macro_recall",
        "test/macro_specificity",
        "test/macro_auprc",
        "test/roc_auc_ovr",
    ):
        assert 0.0 <= m[key] <= 1.0, key
    assert m["test/log_loss"] > 0
    headline = json.loads((out / "metrics.json").read_text())  # the DVC metrics file: the headline subset
    assert list(headline) == [f"test/{k}" for k in TEST_HEADLINE]
    assert headline == {k: m[k] for k in headline}
    prep = pd.read_parquet(Path(tiny_pipeline.paths.prepared_dir) / "index.parquet")
    n_test = int(((prep["split"] == "test") & ~prep["is_copy"].astype(bool)).sum())
    assert m["test/n_samples"] == n_test
    preds = pd.read_csv(out / "predictions.csv")
    assert list(preds.columns) == ["id", "actual", "predicted", "confidence", "p_actual"] and len(preds) == n_test
    assert (preds["actual"] == preds["predicted"]).mean() == pytest.approx(m["test/accuracy"])
    report = pd.read_csv(out / "per_class.csv")
    assert {"class", "precision", "recall", "f1", "support", "specificity", "train_images"} <= set(report.columns)
    assert report["support"].sum() == n_test
    assert "| class |" in (out / "per_class.md").read_text()
    for png in (
        "confusion_matrix.png",
        "top_confusions.png",
        "confusion_gallery.png",
        "per_class_f1.png",
        "training_curves.png",
    ):
        with Image.open(out / png) as im:
            im.verify()
    with Image.open(out / "confusion_matrix.png") as im:
        assert min(im.size) >= 400
    configure(tiny_pipeline.tracking)
    run = mlflow.get_run(read_run_file(tiny_pipeline.paths.run_file)["run_id"])
    assert run.data.metrics["test/macro_f1"] == pytest.approx(m["test/macro_f1"])
    assert not any(k.startswith("test_") or k in ("test/n_samples", "test/n_classes") for k in run.data.metrics)


def test_evaluate_on_a_labelled_catalogue(tiny_pipeline, small_catalogue, shared_catalogue, shared_styles, tmp_path):
    from fashionops.evaluation.stage import run_evaluate

    known = pd.read_csv(small_catalogue / "styles.csv")
    labels = sorted(known["articleType"].unique())[:3]
    rows = known[known["articleType"].isin(labels)].groupby("articleType").head(4)
    unknown_type = shared_styles["articleType"].value_counts().index[40]  # not among the 10 largest
    extra = shared_styles[shared_styles["articleType"] == unknown_type].head(3)
    data = tmp_path / "catalogue"
    (data / "images").mkdir(parents=True)
    for src_dir, frame in ((small_catalogue, rows), (shared_catalogue, extra)):
        for i in frame["id"]:
            shutil.copyfile(src_dir / "images" / f"{i}.jpg", data / "images" / f"{i}.jpg")
    pd.concat([rows, extra]).to_csv(data / "styles.csv", index=False)

    params = tiny_pipeline.model_copy(deep=True)
    params.paths.reports_dir = str(tmp_path / "reports")
    result = run_evaluate(params.evaluate, params.paths, params.tracking, data_dir=str(data))
    assert result["excluded_classes"] == {unknown_type: 3}
    m = json.loads((tmp_path / "reports" / "evaluate" / "summary.json").read_text())
    assert m["test/n_samples"] == 12 and m["test/n_excluded"] == 3
    preds = pd.read_csv(tmp_path / "reports" / "evaluate" / "predictions.csv")
    assert sorted(preds["actual"].unique()) == labels
    # each row names its catalogue item: the id and its label from styles.csv
    assert sorted(preds["id"]) == sorted(rows["id"])
    assert preds["actual"].tolist() == rows.set_index("id").loc[preds["id"], "articleType"].tolist()
    # the model's classes are the prepared cache's: its training images per class are known
    prep = pd.read_parquet(Path(params.paths.prepared_dir) / "index.parquet")
    train = prep[(prep["split"] == "train") & ~prep["is_copy"].astype(bool)]["label"].value_counts()
    report = pd.read_csv(tmp_path / "reports" / "evaluate" / "per_class.csv")
    assert report.set_index("class")["train_images"].to_dict() == {c: int(train[c]) for c in report["class"]}


def test_evaluate_a_pyfunc_model_uri_matches_the_local_model(tiny_pipeline, tmp_path):
    import mlflow

    from fashionops.evaluation.stage import run_evaluate
    from fashionops.registry.pyfunc import log_classifier
    from fashionops.tracking import configure

    params = tiny_pipeline.model_copy(deep=True)
    params.paths.reports_dir = str(tmp_path / "reports")
    configure(params.tracking)
    with mlflow.start_run(run_name="log-for-evaluate-test"):
        info = log_classifier(params.paths.classifier_dir)
    result = run_evaluate(params.evaluate, params.paths, params.tracking, model_uri=info.model_uri)
    local = json.loads((tiny_pipeline.paths.reports("evaluate") / "summary.json").read_text())
    assert result["model"] == info.model_uri and result["mlflow_run_id"]
    for key in ("test/accuracy", "test/macro_f1", "test/n_samples"):
        assert result["metrics"][key] == pytest.approx(local[key]), key
    assert result["metrics"]["test/log_loss"] == pytest.approx(local["test/log_loss"], rel=1e-4)


def test_evaluate_scores_through_the_traced_model_the_eager_one_agrees(tiny_pipeline, monkeypatch):
    """The local model is scored by the frozen NHWC trace (the index's fast path), not the eager
    module, and the trace's probabilities are the eager module's."""
    from fashionops.evaluation.scoring import local_model
    from fashionops.inference.predictor import Predictor

    made: list[Predictor] = []
    real_compiled = Predictor.compiled

    def recording_compiled(self, methods, **kwargs):
        made.append(real_compiled(self, methods, **kwargs))
        return made[-1]

    monkeypatch.setattr(Predictor, "compiled", recording_compiled)
    model_dir = tiny_pipeline.paths.classifier_dir
    scoring = local_model(model_dir, batch_size=4)
    assert len(made) == 1 and made[0].is_scripted and made[0].channels_last
    images = np.load(Path(tiny_pipeline.paths.prepared_dir) / "images.npy", mmap_mode="r")[:10]
    eager = Predictor.from_dir(model_dir).predict_proba(np.ascontiguousarray(images), batch_size=4)
    np.testing.assert_allclose(scoring.predict_proba(np.ascontiguousarray(images)), eager, atol=1e-4)
