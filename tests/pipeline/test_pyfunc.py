"""The two pyfunc models on the tiny real pipeline's outputs: input forms, outputs, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _workspace import private_mlflow_experiment

from fashionops.models.spec import ModelSpec


@pytest.fixture(scope="module")
def logged(tiny_pipeline, tmp_path_factory):
    """Both models logged into their own SQLite store (not registered) and loaded back."""
    import mlflow

    from fashionops.registry.pyfunc import log_classifier, log_visual_search

    store = tmp_path_factory.mktemp("pyfunc_store")
    exp = private_mlflow_experiment(store, "pyfunc")
    with mlflow.start_run(experiment_id=exp):
        cls_info = log_classifier(tiny_pipeline.paths.classifier_dir)
        idx_info = log_visual_search(tiny_pipeline.paths.index_dir, tiny_pipeline.paths.classifier_dir)
    classifier = mlflow.pyfunc.load_model(cls_info.model_uri)
    search = mlflow.pyfunc.load_model(idx_info.model_uri)
    items = pd.read_parquet(Path(tiny_pipeline.paths.index_dir) / "items.parquet")
    files = [Path(tiny_pipeline.paths.raw_dir) / "images" / f"{i}.jpg" for i in items["id"].iloc[[0, 7, 42]]]
    return classifier, search, files, tiny_pipeline


def test_classifier_output_schema_and_metadata(logged):
    classifier, _, files, params = logged
    spec = ModelSpec.read(params.paths.classifier_dir)
    out = classifier.predict(pd.DataFrame({"image": [f.read_bytes() for f in files]}), params={"top_k": 4})
    assert list(out.columns) == [
        "label",
        "probability",
        "top_labels",
        "top_probabilities",
        "probabilities",
        "attributes",
    ]
    assert len(out) == len(files)
    assert classifier.metadata.metadata["classes"] == spec.classes
    assert classifier.metadata.get_input_schema().input_names() == ["image"]
    for row in out.to_dict("records"):
        probs = np.asarray(row["probabilities"])
        assert probs.shape == (len(spec.classes),)
        assert probs.sum() == pytest.approx(1.0, abs=1e-5)
        assert row["label"] == spec.classes[int(probs.argmax())] == row["top_labels"][0]
        assert len(row["top_labels"]) == 4
        assert row["top_probabilities"] == sorted(row["top_probabilities"], reverse=True)
        assert row["probability"] == pytest.approx(probs.max())


def test_input_forms_agree(logged):
    """File bytes (the schema), paths, decoded arrays and a plain list give the same answer."""
    from fashionops.data.imaging import load_rgb
    from fashionops.registry.pyfunc import images_frame

    classifier, _, files, _ = logged
    by_bytes = classifier.predict(pd.DataFrame({"image": [f.read_bytes() for f in files]}))
    by_path = classifier.predict(images_frame(files))
    by_array = classifier.predict(images_frame([load_rgb(f) for f in files]))
    by_list = classifier.unwrap_python_model().predict(None, [str(f) for f in files])
    for other in (by_path, by_array, by_list):
        assert list(other["label"]) == list(by_bytes["label"])
        np.testing.assert_allclose(np.stack(other["probabilities"]), np.stack(by_bytes["probabilities"]), atol=1e-6)


def test_visual_search_finds_the_query_item(logged):
    _, search, files, _ = logged
    out = search.predict(pd.DataFrame({"image": [f.read_bytes() for f in files]}), params={"k": 3})  # the old name
    assert list(out.columns) == ["ids", "names", "article_types", "master_categories", "sub_categories", "distances"]
    for f, row in zip(files, out.to_dict("records")):
        assert len(row["ids"]) == 3 and len(row["names"]) == 3
        assert int(f.stem) in row["ids"], "a catalogue image's own item is among its nearest neighbours"
        assert list(row["distances"]) == sorted(row["distances"])
        assert min(row["distances"]) < 1e-3


@pytest.mark.parametrize(
    "bad, expected",
    [
        (pd.DataFrame({"image": [b"this is not an image"]}), "image row 0: not an image"),
        (pd.DataFrame({"image": [np.zeros((8, 8, 5), np.uint8)]}), "shape must be (H, W, 3)"),
        (pd.DataFrame({"image": [np.zeros((8, 8, 3), np.float32)]}), "dtype must be uint8"),
        ("empty", "empty batch"),
    ],
    ids=["not-an-image", "wrong-shape", "wrong-dtype", "empty-batch"],
)
@pytest.mark.parametrize("which", ["classifier", "search"])
def test_bad_input_is_a_clear_error(logged, bad, expected, which):
    from mlflow.exceptions import MlflowException

    from fashionops.registry.pyfunc import images_frame

    model = logged[0] if which == "classifier" else logged[1]
    frame = images_frame([]) if isinstance(bad, str) else bad
    with pytest.raises(MlflowException) as info:
        model.predict(frame)
    assert isinstance(info.value, ValueError)
    assert expected in info.value.message
    assert info.value.__cause__ is None  # no chained stack trace from the decoder or torch


def test_bad_row_is_named_and_wrong_column_rejected(logged):
    from mlflow.exceptions import MlflowException

    classifier, _, files, _ = logged
    with pytest.raises(MlflowException, match="image row 1"):
        classifier.predict(pd.DataFrame({"image": [files[0].read_bytes(), files[1].read_bytes()[:200]]}))
    with pytest.raises(MlflowException, match="image"):
        classifier.predict(pd.DataFrame({"picture": [files[0].read_bytes()]}))
