"""Multi-attribute tagging, inference side: every attribute with its confidence from the predictor,
the classifier pyfunc, ``fashionops predict``, the API and the web page.

The multi-head model is built from a spec (no training: shapes and plumbing are under test): the
tiny pipeline's single-head classifier plus untrained extra heads for the catalogue's ``gender``,
``season`` and ``baseColour`` values, its backbone and primary head loaded from the tiny model's
weights, so its index still pairs with it and its primary answer is the tiny model's. Images are
real catalogue images. The tiny single-head model checks that old answers only gain ``attributes``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import test_web_ui
from _workspace import private_mlflow_experiment, serving_copy
from fastapi.testclient import TestClient

# the real headless Chromium (DevTools protocol) of the web page's own tests
chromium, browser, shots = test_web_ui.chromium, test_web_ui.browser, test_web_ui.shots

EXTRA = ("gender", "season", "baseColour")  # not alphabetical: the heads keep their order on disk
OLD_KEYS = {"label", "probability", "top_labels", "top_probabilities", "model"}


@pytest.fixture(scope="module")
def multi(tiny_pipeline, shared_styles, tmp_path_factory):
    """Params serving a multi-head classifier (eager; ``jit`` is set per test) and its index."""
    import torch

    from fashionops.models.factory import WEIGHTS_FILE, build_model, save_model
    from fashionops.models.spec import ModelSpec

    p = serving_copy(tiny_pipeline, tmp_path_factory.mktemp("multi_head"))
    single = ModelSpec.read(tiny_pipeline.paths.classifier_dir)
    extras = {name: sorted(str(v) for v in shared_styles[name].dropna().unique()) for name in EXTRA}
    spec = single.updated(attributes=extras)
    module = build_model(spec, pretrained="none")
    state = torch.load(Path(tiny_pipeline.paths.classifier_dir) / WEIGHTS_FILE, weights_only=True)
    missing, unexpected = module.load_state_dict(state, strict=False)
    assert not unexpected and missing and all(k.startswith("extra_heads.") for k in missing)
    save_model(p.paths.classifier_dir, module, spec)
    return p


@pytest.fixture(scope="module")
def images(tiny_pipeline) -> list[Path]:
    items = pd.read_parquet(Path(tiny_pipeline.paths.index_dir) / "items.parquet")
    return [Path(tiny_pipeline.paths.raw_dir) / "images" / f"{i}.jpg" for i in items["id"].iloc[[0, 9, 21, 33]]]


def _decoded(files: list[Path]) -> list[np.ndarray]:
    from fashionops.data.imaging import load_rgb

    return [load_rgb(f) for f in files]


def _softmax_heads(predictor, decoded: list[np.ndarray]) -> list[np.ndarray]:
    """Softmax of every head of ``attribute_logits``, straight from the eager module (with the
    spec's ``flip_tta``: of the mean logits of each image and its mirror image)."""
    import torch

    from fashionops.inference.preprocess import preprocess_batch

    x = preprocess_batch(predictor.fit(decoded), predictor.spec, predictor.device)
    with torch.inference_mode():
        heads = [t.float() for t in predictor.module.attribute_logits(x)]
        if predictor.spec.flip_tta:
            mirrored = predictor.module.attribute_logits(torch.flip(x, dims=[3]))
            heads = [(t + m.float()) / 2 for t, m in zip(heads, mirrored)]
        return [torch.softmax(t, dim=1).numpy() for t in heads]


def test_predictor_tags_every_attribute_as_softmax_of_its_head(multi, tiny_pipeline, images):
    from fashionops.inference.predictor import Predictor
    from fashionops.serving.torchscript import compiled_for_serving

    predictor = Predictor.from_dir(multi.paths.classifier_dir)
    names = [predictor.spec.label_column, *EXTRA]
    assert list(predictor.attributes) == names == predictor.spec.attribute_names
    decoded = _decoded(images)
    heads = _softmax_heads(predictor, decoded)
    answers = predictor.classify(decoded, k=3)
    for n, answer in enumerate(answers):
        assert list(answer["attributes"]) == names, "every attribute, the primary first"
        for (name, tag), probs in zip(answer["attributes"].items(), heads):
            assert 0.0 <= tag["probability"] <= 1.0
            assert tag["label"] == predictor.attributes[name][int(probs[n].argmax())]
            assert tag["probability"] == pytest.approx(float(probs[n].max()), abs=1e-6)
        assert answer["attributes"][names[0]] == {"label": answer["label"], "probability": answer["probability"]}

    # Same backbone and primary head as the single-head model: the same primary answer.
    single = Predictor.from_dir(tiny_pipeline.paths.classifier_dir).classify(decoded, k=3)
    for a, b in zip(answers, single):
        assert a["label"] == b["label"] and a["probability"] == pytest.approx(b["probability"], abs=1e-6)

    # The server's frozen trace (own compilation unit) holds attribute_logits and agrees with eager.
    traced = compiled_for_serving(predictor, ["forward", "embed"])
    assert traced.is_scripted and hasattr(traced.module, "attribute_logits")
    for a, b in zip(answers, traced.classify(decoded, k=3)):
        assert [t["label"] for t in b["attributes"].values()] == [t["label"] for t in a["attributes"].values()]
        got = [t["probability"] for t in b["attributes"].values()]
        assert got == pytest.approx([t["probability"] for t in a["attributes"].values()], abs=1e-4)


def test_single_head_predictor_tags_its_primary_label_alone(tiny_pipeline, images):
    from fashionops.inference.predictor import Predictor

    predictor = Predictor.from_dir(tiny_pipeline.paths.classifier_dir)
    primary = predictor.spec.label_column
    for answer in predictor.classify(_decoded(images), k=2):
        assert set(answer) == {"label", "probability", "top", "attributes"}
        assert answer["attributes"] == {primary: answer["top"][0]}


@pytest.fixture(scope="module")
def logged(multi, tiny_pipeline, tmp_path_factory):
    """Both classifiers logged with ``log_classifier`` into a private SQLite store, loaded back."""
    import mlflow

    from fashionops.registry.pyfunc import log_classifier

    store = tmp_path_factory.mktemp("multi_pyfunc_store")
    exp = private_mlflow_experiment(store, "multi-attribute")
    with mlflow.start_run(experiment_id=exp):
        infos = {
            "multi": log_classifier(multi.paths.classifier_dir),
            "single": log_classifier(tiny_pipeline.paths.classifier_dir),
        }
    return {which: info.model_uri for which, info in infos.items()}


def test_pyfunc_returns_every_attribute(logged, multi, tiny_pipeline, images):
    import mlflow

    from fashionops.inference.predictor import Predictor
    from fashionops.registry.pyfunc import classifier_signature

    frame = pd.DataFrame({"image": [f.read_bytes() for f in images]})
    for which, model_dir in (("multi", multi.paths.classifier_dir), ("single", tiny_pipeline.paths.classifier_dir)):
        model = mlflow.pyfunc.load_model(logged[which])
        predictor = Predictor.from_dir(model_dir)
        assert model.metadata.signature == classifier_signature()
        meta = model.metadata.metadata["attributes"]
        assert meta == [{"name": name, "classes": classes} for name, classes in predictor.attributes.items()]
        out = model.predict(frame, params={"top_k": 2})
        assert list(out.columns) == [
            "label",
            "probability",
            "top_labels",
            "top_probabilities",
            "probabilities",
            "attributes",
        ]
        expected = predictor.classify(_decoded(images), k=2)
        for row, want in zip(out.to_dict("records"), expected):
            assert list(row["attributes"]) == list(predictor.attributes)
            assert row["attributes"][predictor.spec.label_column]["label"] == row["label"]
            for name, tag in row["attributes"].items():
                assert tag["label"] == want["attributes"][name]["label"]
                assert tag["probability"] == pytest.approx(want["attributes"][name]["probability"], abs=1e-6)
        # what a deploy job does with the column: one flat column per attribute value/probability
        flat = pd.json_normalize(out["attributes"].tolist())
        assert list(flat.columns) == [
            f"{name}.{key}" for name in predictor.attributes for key in ("label", "probability")
        ]


def test_predict_lines_carry_every_attribute(logged, multi, tmp_path, images):
    import mlflow

    from fashionops.inference.predict import predict_images

    local = mlflow.artifacts.download_artifacts(logged["multi"], dst_path=str(tmp_path / "model"))
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    lines = list(predict_images(multi, [*images[:2], bad], model_uri=local, k=2))
    assert [line["file"] for line in lines] == [str(images[0]), str(images[1]), str(bad)]
    assert "error" in lines[2] and "attributes" not in lines[2]
    for line in lines[:2]:
        json.dumps(line)  # a JSON line
        names = list(line["attributes"])
        assert names == [
            json.loads(Path(multi.paths.classifier_dir, "model_spec.json").read_text())["label_column"],
            *EXTRA,
        ]
        assert line["attributes"][names[0]] == {"label": line["label"], "probability": line["probability"]}
        assert all(0.0 <= tag["probability"] <= 1.0 for tag in line["attributes"].values())


@pytest.mark.parametrize("jit", [True, False])
def test_api_answers_with_every_attribute(multi, images, monkeypatch, jit):
    from fashionops.inference.predictor import Predictor
    from fashionops.serving.app import create_app

    p = multi.model_copy(deep=True)
    p.serve.jit = jit
    monkeypatch.delenv(p.serve.token_env, raising=False)
    expected = Predictor.from_dir(p.paths.classifier_dir).classify(_decoded(images[:1]), k=3)[0]
    with TestClient(create_app(p)) as client:
        assert client.get("/health").json()["jit"] is jit
        r = client.post("/classify?top_k=3", files={"file": (images[0].name, images[0].read_bytes(), "image/jpeg")})
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body) == OLD_KEYS | {"attributes"}
        assert list(body["attributes"]) == list(expected["attributes"])  # primary first, then spec order
        for name, tag in body["attributes"].items():
            assert tag["label"] == expected["attributes"][name]["label"]
            assert tag["probability"] == pytest.approx(expected["attributes"][name]["probability"], abs=1e-4)
        primary = next(iter(body["attributes"].values()))
        assert primary == {"label": body["label"], "probability": body["probability"]}
        schema = client.get("/openapi.json").json()["components"]["schemas"]
        assert "attributes" in schema["ClassifyResponse"]["required"]
        assert set(schema["AttributeTag"]["properties"]) == {"label", "probability"}


def test_single_head_answer_only_gains_attributes(tiny_pipeline, tmp_path, images, monkeypatch):
    from fashionops.models.spec import ModelSpec
    from fashionops.serving.app import create_app

    p = serving_copy(tiny_pipeline, tmp_path)
    monkeypatch.delenv(p.serve.token_env, raising=False)
    primary = ModelSpec.read(p.paths.classifier_dir).label_column
    with TestClient(create_app(p)) as client:
        body = client.post("/classify", files={"file": (images[1].name, images[1].read_bytes(), "image/jpeg")}).json()
    assert set(body) == OLD_KEYS | {"attributes"}
    assert body["attributes"] == {primary: {"label": body["label"], "probability": body["probability"]}}
    assert body["top_labels"][0] == body["label"] and body["top_probabilities"][0] == body["probability"]


@pytest.fixture(scope="module")
def live_multi(multi):
    from fashionops.serving.app import create_app, serve_in_thread

    p = multi.model_copy(deep=True)
    os.environ.pop(p.serve.token_env, None)
    with serve_in_thread(create_app(p)) as url:
        yield url


def test_web_page_shows_every_attribute_with_its_confidence(live_multi, browser, images, shots):
    import httpx

    url = live_multi
    photo = images[2]
    pred = httpx.post(f"{url}/classify", files={"file": (photo.name, photo.read_bytes(), "image/jpeg")}, timeout=30)
    attributes = pred.json()["attributes"]

    browser.upload(url, photo)
    browser.wait_for("!document.getElementById('prediction').hidden")
    browser.wait_for(
        "!!document.getElementById('pred-attributes') && !document.getElementById('pred-attributes').hidden"
    )
    shown = browser.eval(
        "[...document.querySelectorAll('#pred-attributes dd')].map((dd) => "
        "[dd.dataset.attribute, dd.querySelector('strong').textContent, dd.querySelector('.muted').textContent])"
    )
    assert [row[0] for row in shown] == list(attributes)
    for name, value, confidence in shown:
        assert value == attributes[name]["label"]
        assert confidence.strip() == f"{100 * attributes[name]['probability']:.1f}%"
    names = browser.eval("[...document.querySelectorAll('#pred-attributes dt')].map((dt) => dt.textContent)")
    assert names == list(attributes)
    visible = browser.eval("document.getElementById('pred-attributes').getBoundingClientRect().height")
    assert visible > 0
    print("screenshot:", browser.screenshot(shots / "web_ui_attributes.png"))


def test_web_page_hides_the_list_for_a_single_head_model(tiny_pipeline, browser, images, tmp_path):
    from fashionops.serving.app import create_app, serve_in_thread

    p = serving_copy(tiny_pipeline, tmp_path)
    os.environ.pop(p.serve.token_env, None)
    with serve_in_thread(create_app(p)) as url:
        browser.upload(url, images[3])
        browser.wait_for(
            "!document.getElementById('prediction').hidden && !!document.getElementById('pred-attributes')"
        )
        assert browser.eval("document.getElementById('pred-attributes').hidden") is True
        assert browser.eval("document.querySelectorAll('#pred-attributes dd').length") == 1
