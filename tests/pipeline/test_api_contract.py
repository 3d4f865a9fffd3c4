"""The deploy contract (issue #19) on the tiny real pipeline: ``pull`` writes folders with the
usual umask, the server answers with the pyfunc's field names (``top_k``, ``top_labels``,
``top_probabilities``), its answers name the model without repeating its metrics (``/health``
keeps them), and items carry gender, colour and year.

One real registration (this module's own model names in the tiny pipeline's MLflow store), a real
``pull`` and the real app served from the pull directory (FastAPI TestClient); nothing mocked.
"""

from __future__ import annotations

import json
import os
import stat
import uuid
from pathlib import Path

import pandas as pd
import pytest

fastapi_testclient = pytest.importorskip("fastapi.testclient")

_SESSION = uuid.uuid4().hex[:8]
CLS, IDX = f"test-api-classifier-{_SESSION}", f"test-api-search-{_SESSION}"


@pytest.fixture(scope="module")
def champion(tiny_pipeline, tmp_path_factory):
    """The tiny pipeline's pair registered (and so @champion) under this module's names."""
    from fashionops.registry.register import run_register

    p = tiny_pipeline.model_copy(deep=True)
    p.register.classifier_name, p.register.index_name = CLS, IDX
    reports = tmp_path_factory.mktemp("api_contract") / "reports"
    reports.mkdir()
    for sub in Path(tiny_pipeline.paths.reports_dir).iterdir():
        if sub.is_dir() and sub.name != "register":
            (reports / sub.name).symlink_to(sub, target_is_directory=True)
    p.paths.reports_dir = str(reports)
    result = run_register(p.register, p.paths, p.tracking, embedder_dir=p.index.embedder_dir, run_config=p.flat())
    assert result["decision"] == "promoted", result
    return p


def _pull_under(params, dest: Path, mask: int) -> dict:
    from fashionops.registry.pull import pull

    previous = os.umask(mask)
    try:
        return pull(params.register, params.tracking, "champion", dest)
    finally:
        os.umask(previous)


@pytest.mark.parametrize(("mask", "folder_mode"), [(0o022, 0o755), (0o027, 0o750)])
def test_pull_folders_follow_the_umask(champion, tmp_path, mask, folder_mode):
    dest = tmp_path / "pulled"
    _pull_under(champion, dest, mask)
    assert stat.S_IMODE(dest.stat().st_mode) == folder_mode  # was 0700 (the staging mkdtemp's)
    folders = [d for d in dest.rglob("*") if d.is_dir()]
    assert folders and {stat.S_IMODE(d.stat().st_mode) for d in folders} == {folder_mode}
    manifest = dest / "manifest.json"
    assert stat.S_IMODE(manifest.stat().st_mode) == 0o666 & ~mask


@pytest.fixture(scope="module")
def client(champion, tmp_path_factory):
    """The app serving a `fashionops pull` directory (as a deploy does), with its manifest."""
    from fashionops.serving.app import create_app

    dest = tmp_path_factory.mktemp("api_pull") / "pulled"
    manifest = _pull_under(champion, dest, 0o022)
    p = champion.model_copy(deep=True)
    p.serve.source, p.serve.model_dir, p.serve.jit, p.serve.reload_poll_s = "dir", str(dest), False, 0.0
    env = os.environ.pop(p.serve.token_env, None)
    try:
        with fastapi_testclient.TestClient(create_app(p)) as c:
            c.manifest, c.pulled = manifest, dest
            yield c
    finally:
        if env is not None:
            os.environ[p.serve.token_env] = env


@pytest.fixture(scope="module")
def catalogue(champion) -> pd.DataFrame:
    return pd.read_csv(Path(champion.paths.raw_dir) / "styles.csv", dtype={"year": "Int64"}).set_index("id")


def _photo(params, item_id: int) -> dict:
    path = Path(params.paths.raw_dir) / "images" / f"{item_id}.jpg"
    return {"file": (path.name, path.read_bytes(), "image/jpeg")}


def test_answers_name_the_model_and_health_keeps_its_metrics(client, champion, catalogue):
    item_id = int(catalogue.index[0])
    health = client.get("/health").json()
    assert health["source"] == "dir"
    assert client.manifest["classifier"]["metrics"]  # the classifier is registered with its test metrics
    for role in ("classifier", "index"):  # /health shows them, once
        assert (health[role].get("metrics") or {}) == client.manifest[role]["metrics"]
    classified = client.post("/classify", files=_photo(champion, item_id)).json()
    found = client.post("/search", files=_photo(champion, item_id)).json()
    by_item = client.post("/search", json={"item_id": item_id}).json()
    for body, role in ((classified, "classifier"), (found, "index"), (by_item, "index")):
        model = body["model"]
        # ("metric" is the index's distance, a setting: angular, euclidean, ...)
        assert "metrics" not in model and not any(isinstance(v, (dict, list)) for v in model.values()), model
        assert (model["name"], str(model["version"])) == (
            client.manifest[role]["name"],
            client.manifest[role]["version"],
        )
    assert len(json.dumps(classified)) < 2000  # a label and a few numbers, not a model card


def test_classify_uses_the_pyfunc_names(client, champion, catalogue):
    item_id = int(catalogue.index[1])
    body = client.post("/classify", files=_photo(champion, item_id), data={"top_k": "3"}).json()
    assert set(body) == {"label", "probability", "top_labels", "top_probabilities", "attributes", "model"}
    assert len(body["top_labels"]) == len(body["top_probabilities"]) == 3
    assert body["top_labels"][0] == body["label"] and body["top_probabilities"][0] == body["probability"]
    # top_k in the query string; the old name k still works, and top_k wins when both are sent
    assert len(client.post("/classify?top_k=2", files=_photo(champion, item_id)).json()["top_labels"]) == 2
    assert len(client.post("/classify?k=2", files=_photo(champion, item_id)).json()["top_labels"]) == 2
    both = client.post("/classify?k=4", files=_photo(champion, item_id), data={"top_k": "1", "k": "5"}).json()
    assert len(both["top_labels"]) == 1
    bad = client.post("/classify", files=_photo(champion, item_id), data={"top_k": "0"})
    assert bad.status_code == 422 and bad.json()["detail"] == "top_k must be between 1 and 50 (got 0)"


def test_search_items_carry_gender_colour_and_year(client, champion, catalogue):
    item_id = int(catalogue.index[2])
    found = client.post("/search", json={"item_id": item_id, "top_k": 4}).json()
    assert len(found["results"]) == 4
    for item in [found["query"]["item"], *found["results"]]:
        row = catalogue.loc[item["id"]]
        assert (item["gender"], item["baseColour"], item["year"]) == (row["gender"], row["baseColour"], row["year"])
        assert item["name"] == row["productDisplayName"]
    one = client.get(f"/items/{item_id}").json()
    assert one["gender"] == catalogue.loc[item_id, "gender"] and isinstance(one["year"], int)


def test_openapi_shows_the_same_names(client):
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    assert {"top_labels", "top_probabilities"} <= set(schemas["ClassifyResponse"]["properties"])
    assert "top" not in schemas["ClassifyResponse"]["properties"]
    assert {"gender", "baseColour", "year"} <= set(schemas["Item"]["properties"])
    for answer in ("ClassifierAnswer", "IndexAnswer"):
        assert "metrics" not in schemas[answer]["properties"]
    assert "metrics" in schemas["ModelInfo"]["properties"]  # /health
    query = {p["name"]: p for p in spec["paths"]["/classify"]["post"]["parameters"]}
    assert not query["top_k"].get("deprecated") and query["k"]["deprecated"] is True


def test_pyfunc_input_forms_are_the_ones_readme_documents(client, champion, catalogue):
    """README's table of input forms, on the pulled classifier: a DataFrame column ``image`` of
    file bytes (or paths/arrays, or a dict of that column) works; a bare list, one bytes object or
    a Series is refused by MLflow's schema check, with a message naming the ``image`` column."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from fashionops.registry.pyfunc import images_frame

    model = mlflow.pyfunc.load_model(str(client.pulled / client.manifest["classifier"]["dir"]))
    files = [str(Path(champion.paths.raw_dir) / "images" / f"{int(i)}.jpg") for i in catalogue.index[:2]]
    data = [Path(f).read_bytes() for f in files]
    expected = list(model.predict(pd.DataFrame({"image": data}), params={"top_k": 2})["label"])
    assert len(expected) == 2
    for accepted in (pd.DataFrame({"image": files}), {"image": data}, images_frame(files), images_frame(data)):
        out = model.predict(accepted, params={"top_k": 2})
        assert list(out["label"]) == expected
        assert {"label", "probability", "top_labels", "top_probabilities"} <= set(out.columns)
    for refused in (data, files, data[0], pd.Series(data)):
        with pytest.raises(MlflowException, match="image"):
            model.predict(refused, params={"top_k": 2})


def test_a_mistyped_alias_suggests_the_closest_one(champion, tmp_path):
    from fashionops.registry.aliases import AliasNotSet
    from fashionops.registry.pull import pull

    with pytest.raises(AliasNotSet, match=r"no @champoin .* \(did you mean champion\?\)"):
        pull(champion.register, champion.tracking, "champoin", tmp_path / "pulled")
    assert not (tmp_path / "pulled").exists()
