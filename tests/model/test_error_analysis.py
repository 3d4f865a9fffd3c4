"""Error analysis of the evaluate stage: predictions by item id, the confusion gallery, the training
images per class and the classes below F1 0.8 (the tiny pipeline of conftest, plus hand-made cases)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fashionops.evaluation.error_analysis import (
    PREDICTION_COLUMNS,
    WEAK_F1,
    gallery_pairs,
    predictions_frame,
    train_image_counts,
    weak_classes,
    weak_classes_markdown,
)
from fashionops.evaluation.metrics import confusion, misclassified_pairs, per_class_report
from fashionops.evaluation.scoring import Scored, ScoringModel, score_catalogue, score_test_split
from fashionops.evaluation.stage import REPORT_FILES, write_reports


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def _prepared(params) -> tuple[pd.DataFrame, np.ndarray]:
    prepared = Path(params.paths.prepared_dir)
    return pd.read_parquet(prepared / "index.parquet"), np.load(prepared / "images.npy", mmap_mode="r")


# --------------------------------------------------------------------------- selection, by hand
def test_gallery_pairs_are_the_top_pairs_most_confident_first():
    classes = ["a", "b", "c", "d"]
    # a->b three times (confidences 0.6, 0.9, 0.7), c->d twice, b->a once, d->c once; the rest right
    y_true = np.array([0, 0, 0, 2, 2, 1, 3, 0, 1, 2, 3])
    y_pred = np.array([1, 1, 1, 3, 3, 0, 2, 0, 1, 2, 3])
    top = np.array([0.6, 0.9, 0.7, 0.55, 0.8, 0.5, 0.95, 0.9, 0.9, 0.9, 0.9])
    proba = np.full((len(y_true), 4), 0.0)
    proba[np.arange(len(y_true)), y_pred] = top
    rest = (1 - top) / 3
    proba += (proba == 0) * rest[:, None]

    pairs = gallery_pairs(y_true, y_pred, proba, classes, n_pairs=3, per_pair=2)
    expected = misclassified_pairs(y_true, y_pred, classes, top=3)
    assert [(classes[p.true], classes[p.predicted], p.count) for p in pairs] == list(
        expected[["true", "predicted", "count"]].itertuples(index=False, name=None)
    )
    assert [(classes[p.true], classes[p.predicted]) for p in pairs] == [("a", "b"), ("c", "d"), ("b", "a")]
    assert pairs[0].examples == [1, 2]  # 0.9 then 0.7; the 0.6 mistake is the third, left out
    assert pairs[1].examples == [4, 3] and pairs[2].examples == [5]
    assert pairs[0].share_of_true == pytest.approx(3 / 4)
    for p in pairs:
        assert all(y_true[i] == p.true and y_pred[i] == p.predicted for i in p.examples)

    assert gallery_pairs(y_true, y_true, np.eye(4)[y_true], classes) == []  # nothing misclassified


def test_weak_classes_name_those_below_the_threshold_with_their_confusions():
    classes = ["a", "b", "c"]
    # a: 8/10 right, 2 -> b (F1 0.89); b: 5/5 right but gets a's 2 and c's 4 (0.62); c: 6/10 right, 4 -> b (0.75)
    y_true = np.array([0] * 10 + [1] * 5 + [2] * 10)
    y_pred = np.array([0] * 8 + [1] * 2 + [1] * 5 + [2] * 6 + [1] * 4)
    report = per_class_report(y_true, y_pred, classes)
    report["train_images"] = pd.array(report["class"].map({"a": 40, "b": 20, "c": 30}), dtype="Int64")
    f1 = report.set_index("class")["f1"]
    assert f1["a"] >= WEAK_F1 > f1["b"] and f1["c"] < WEAK_F1
    weak = weak_classes(report, confusion(y_true, y_pred, 3), classes, WEAK_F1)
    assert weak["class"].tolist() == sorted(["b", "c"], key=lambda c: f1[c])
    by_class = weak.set_index("class")
    assert by_class.loc["c", "predicted_as"] == "b (4)" and by_class.loc["c", "mistaken_for_it"] == ""
    assert by_class.loc["b", "predicted_as"] == "" and by_class.loc["b", "mistaken_for_it"] == "c (4)"
    md = weak_classes_markdown(report, y_true, y_pred, classes, WEAK_F1)
    assert "## Classes below F1 0.8 (2 of 3)" in md
    lines = [line for line in md.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [line.split(" | ")[0].lstrip("| ") for line in lines] == weak["class"].tolist()
    c_line = next(line for line in lines if line.startswith("| c |"))
    assert "| 10 | 30 | b (4) |" in c_line  # support, train images, top confusion
    perfect = per_class_report(y_true, y_true, classes)
    assert "None: every class reaches F1 0.8" in weak_classes_markdown(perfect, y_true, y_true, classes, WEAK_F1)


def test_train_image_counts_exclude_copies_and_other_label_spaces(tmp_path):
    index = pd.DataFrame(
        {
            "label": ["a", "a", "a", "b", "b", "a", "b"],
            "split": ["train", "train", "train", "train", "val", "test", "train"],
            "is_copy": [False, False, True, False, False, False, True],  # oversampled copies
        }
    )
    index.to_parquet(tmp_path / "index.parquet")
    (tmp_path / "labels.json").write_text(json.dumps({"column": "articleType", "classes": ["a", "b", "c"]}))
    assert train_image_counts(tmp_path, ["c", "a", "b"], "articleType") == {"c": 0, "a": 2, "b": 1}
    assert train_image_counts(tmp_path, ["a", "b"], "articleType") is None  # another model's classes
    assert train_image_counts(tmp_path, ["a", "b", "c"], "gender") is None
    assert train_image_counts(tmp_path / "missing", ["a", "b", "c"], "articleType") is None


# --------------------------------------------------------------------------- a set without mistakes
def test_no_misclassification_still_writes_every_report(tmp_path):
    classes = ["a", "b", "c"]
    y_true = np.array([0, 1, 2, 0, 1, 2])
    proba = np.full((6, 3), 0.05) + 0.85 * np.eye(3)[y_true]
    images = np.zeros((6, 80, 60, 3), dtype=np.uint8)
    scored = Scored(proba, y_true, classes, "articleType", "hand-made", ids=np.arange(100, 106))
    scored.image_of = lambda i: images[i]
    write_reports(scored, tmp_path, None, train_counts={"a": 5, "b": 6, "c": 7})
    for name in REPORT_FILES:
        assert (tmp_path / name).is_file(), name
    width, height = _png_size(tmp_path / "confusion_gallery.png")
    assert height < 400  # the one-line "no misclassified images" picture, not a grid of images
    _png_size(tmp_path / "top_confusions.png")
    preds = pd.read_csv(tmp_path / "predictions.csv")
    assert list(preds.columns) == PREDICTION_COLUMNS
    assert preds["id"].tolist() == list(range(100, 106)) and (preds["actual"] == preds["predicted"]).all()
    np.testing.assert_allclose(preds["confidence"], preds["p_actual"])
    assert "None: every class reaches F1 0.8" in (tmp_path / "per_class.md").read_text()
    assert pd.read_csv(tmp_path / "per_class.csv").set_index("class")["train_images"].to_dict() == {
        "a": 5,
        "b": 6,
        "c": 7,
    }


# --------------------------------------------------------------------------- scoring keeps ids and pixels
def _oracle(params) -> ScoringModel:
    """A model that knows every prepared test image: one-hot of its true label (found by its pixels),
    so a prediction in the wrong row is a wrong prediction."""
    index, images = _prepared(params)
    classes = sorted(index["label"].unique())
    test = index[index["split"] == "test"]
    known = {images[r].tobytes(): classes.index(label) for r, label in zip(test["row"], test["label"])}

    def predict(batch) -> np.ndarray:
        return np.stack(
            [np.eye(len(classes))[known[np.asarray(img).tobytes()]] * 0.9 + 0.1 / len(classes) for img in batch]
        )

    return ScoringModel(classes, "articleType", predict)


def test_scoring_the_test_split_keeps_each_images_id_and_pixels(tiny_pipeline):
    index, images = _prepared(tiny_pipeline)
    scored = score_test_split(_oracle(tiny_pipeline), tiny_pipeline.paths.prepared_dir)
    assert (scored.y_pred == scored.y_true).all()
    test = index[(index["split"] == "test") & ~index["is_copy"].astype(bool)].set_index("id")
    assert sorted(scored.ids.tolist()) == sorted(test.index.tolist())
    for i in (0, len(scored.y_true) // 2, len(scored.y_true) - 1):
        item = test.loc[scored.ids[i]]
        assert scored.classes[scored.y_true[i]] == item["label"]
        np.testing.assert_array_equal(scored.image(i), images[item["row"]])
    frame = predictions_frame(scored)
    assert frame["actual"].tolist() == test.loc[frame["id"], "label"].tolist()


def test_catalogue_ids_of_a_folder_per_class_catalogue(tmp_path, small_catalogue):
    styles = pd.read_csv(small_catalogue / "styles.csv")
    data = tmp_path / "folders"
    picked = styles.groupby("articleType").head(2).head(4)
    for image_id, label in zip(picked["id"], picked["articleType"]):
        (data / label).mkdir(parents=True, exist_ok=True)
        (data / label / f"{image_id}.jpg").write_bytes((small_catalogue / "images" / f"{image_id}.jpg").read_bytes())
    classes = sorted(picked["articleType"].unique())
    model = ScoringModel(classes, "articleType", lambda imgs: np.full((len(imgs), len(classes)), 1 / len(classes)))
    scored = score_catalogue(model, data)
    expected = {f"{label}/{i}.jpg" for i, label in zip(picked["id"], picked["articleType"])}
    assert set(scored.ids) == expected
    for i, item in enumerate(scored.ids):
        assert scored.classes[scored.y_true[i]] == item.split("/")[0]
        with Image.open(data / item) as im:
            np.testing.assert_array_equal(scored.image(i), np.asarray(im.convert("RGB")))


# --------------------------------------------------------------------------- the stage on the tiny pipeline
def test_evaluate_writes_the_error_analysis(tiny_pipeline):
    import mlflow

    from fashionops.tracking import configure, read_run_file

    out = tiny_pipeline.paths.reports("evaluate")
    index, _ = _prepared(tiny_pipeline)
    originals = index[~index["is_copy"].astype(bool)]
    test = originals[originals["split"] == "test"].set_index("id")

    preds = pd.read_csv(out / "predictions.csv")
    assert list(preds.columns) == PREDICTION_COLUMNS and len(preds) == len(test)
    assert preds["id"].is_unique and set(preds["id"]) == set(test.index)
    assert preds["actual"].tolist() == test.loc[preds["id"], "label"].tolist()  # each id on its own row
    assert ((preds["p_actual"] <= preds["confidence"] + 1e-9) & (preds["confidence"] <= 1)).all()
    right = preds["actual"] == preds["predicted"]
    np.testing.assert_allclose(preds.loc[right, "p_actual"], preds.loc[right, "confidence"])
    assert (preds.loc[~right, "p_actual"] < preds.loc[~right, "confidence"]).all()

    report = pd.read_csv(out / "per_class.csv")
    train = originals[originals["split"] == "train"]["label"].value_counts()
    assert report.set_index("class")["train_images"].to_dict() == {c: int(train[c]) for c in report["class"]}
    md = (out / "per_class.md").read_text()
    section = md.split("## Classes below F1 0.8", 1)[1]
    weak = report[report["f1"] < WEAK_F1]
    assert f"({len(weak)} of {len(report)})" in section
    for row in weak.itertuples(index=False):
        assert f"| {row[0]} | {row.f1:.3f} |" in section and f"| {row.train_images} |" in section
    for row in report[report["f1"] >= WEAK_F1].itertuples(index=False):
        assert f"| {row[0]} |" not in section

    width, height = _png_size(out / "confusion_gallery.png")
    n_pairs = min(8, preds[~right].groupby(["actual", "predicted"]).ngroups)
    if n_pairs:
        assert width >= 600 and height >= 250 * n_pairs  # rows of upscaled images, not thumbnails
    assert min(_png_size(out / "top_confusions.png")) >= 200

    configure(tiny_pipeline.tracking)
    run_id = read_run_file(tiny_pipeline.paths.run_file)["run_id"]
    logged = {Path(a.path).name for a in mlflow.MlflowClient().list_artifacts(run_id, "evaluate")}
    assert {"confusion_gallery.png", "top_confusions.png", "predictions.csv", "per_class.md"} <= logged
