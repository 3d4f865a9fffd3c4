"""Both pyfunc models are MLflow "models from code" (issue #18 item 3): the registered model holds
a Python file naming the class and no pickled Python object, and it loads with MLflow's pickle
deserialisation switched off, as the same class on the same artifacts."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml
from _workspace import private_mlflow_experiment

CODE_LOADER = "mlflow.pyfunc.loaders.code_model"


@pytest.fixture(scope="module")
def registered(tiny_pipeline, tmp_path_factory):
    """Both models logged and registered (version 1 each) in their own SQLite store."""
    import mlflow

    from fashionops.registry.pyfunc import log_classifier, log_visual_search

    store = tmp_path_factory.mktemp("from_code_store")
    exp = private_mlflow_experiment(store, "from-code")
    paths = tiny_pipeline.paths
    with mlflow.start_run(experiment_id=exp):
        infos = {
            "classifier": log_classifier(paths.classifier_dir, "classifier", tags={"kind": "classifier"}),
            "search": log_visual_search(paths.index_dir, paths.classifier_dir, "visual_search"),
        }
    uris = {}
    for which, info in infos.items():
        version = mlflow.register_model(info.model_uri, f"from-code-{which}")
        uris[which] = f"models:/from-code-{which}/{version.version}"
    return uris, tiny_pipeline


@pytest.mark.parametrize("which, cls", [("classifier", "ClassifierModel"), ("search", "VisualSearchModel")])
def test_registered_model_holds_code_and_no_pickle(registered, which, cls):
    import mlflow

    from fashionops.registry.pyfunc import MODEL_CODE, pip_requirements

    uris, _ = registered
    local = Path(mlflow.artifacts.download_artifacts(uris[which]))
    pickles = [p.relative_to(local) for p in local.rglob("*") if p.suffix in (".pkl", ".pickle", ".cloudpickle")]
    assert pickles == [], f"pickled objects in the model: {pickles}"
    flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    assert "python_model" not in flavor, "MLmodel points at a pickled python_model"
    assert flavor["loader_module"] == CODE_LOADER
    code_file = local / Path(flavor["model_code_path"]).name
    assert code_file.read_text() == MODEL_CODE.format(cls=cls)
    assert (local / flavor["code"] / "fashionops" / "registry" / "pyfunc.py").is_file()  # code_paths kept
    assert (local / "requirements.txt").read_text().split() == pip_requirements()


def test_registered_models_load_without_unpickling_and_predict(registered, monkeypatch):
    import mlflow

    from fashionops.models.spec import ModelSpec
    from fashionops.registry.pyfunc import (
        CLASSIFIER_ARTIFACT,
        EMBEDDER_ARTIFACT,
        INDEX_ARTIFACT,
        ClassifierModel,
        VisualSearchModel,
        classifier_signature,
        visual_search_signature,
    )

    uris, params = registered
    # MLflow refuses any cloudpickled python_model with this off: the load must not need one
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    classifier = mlflow.pyfunc.load_model(uris["classifier"])
    search = mlflow.pyfunc.load_model(uris["search"])

    inner = classifier.unwrap_python_model()
    assert type(inner) is ClassifierModel
    assert classifier.metadata.signature == classifier_signature()
    assert classifier.metadata.metadata["classes"] == ModelSpec.read(params.paths.classifier_dir).classes
    assert inner.predictor.classes == classifier.metadata.metadata["classes"]
    assert type(search.unwrap_python_model()) is VisualSearchModel
    assert search.metadata.signature == visual_search_signature()
    flavors = {
        which: model.metadata.flavors["python_function"]["artifacts"]
        for which, model in (("classifier", classifier), ("search", search))
    }
    assert set(flavors["classifier"]) == {CLASSIFIER_ARTIFACT}
    assert set(flavors["search"]) == {INDEX_ARTIFACT, EMBEDDER_ARTIFACT}

    items = pd.read_parquet(Path(params.paths.index_dir) / "items.parquet")
    files = [Path(params.paths.raw_dir) / "images" / f"{i}.jpg" for i in items["id"].iloc[[0, 5]]]
    frame = pd.DataFrame({"image": [f.read_bytes() for f in files]})
    labels = classifier.predict(frame, params={"top_k": 2})
    assert list(labels.columns) == [
        "label",
        "probability",
        "top_labels",
        "top_probabilities",
        "probabilities",
        "attributes",
    ]
    assert all(len(row) == 2 for row in labels["top_labels"])
    hits = search.predict(frame, params={"top_k": 3})  # the classifier's name for it
    assert all(len(ids) == 3 for ids in hits["ids"])
    for f, ids in zip(files, hits["ids"]):
        assert int(f.stem) in ids
