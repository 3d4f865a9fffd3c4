"""The serving API on real models: a bundle over the ``tiny_pipeline`` outputs, FastAPI TestClient.

Every request goes through the real app (upload parsing, limits, auth, models, Annoy index);
nothing is mocked. The models are copied so that reload tests can change them.
"""

from __future__ import annotations

import io
import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _workspace import serving_copy
from PIL import Image

fastapi_testclient = pytest.importorskip("fastapi.testclient")
TestClient = fastapi_testclient.TestClient


@pytest.fixture(scope="module")
def serve_params(tiny_pipeline, tmp_path_factory):
    return serving_copy(tiny_pipeline, tmp_path_factory.mktemp("serve_models"), jit=True)


@pytest.fixture(scope="module")
def bundle(serve_params):
    """The served pair, loaded once; apps with other settings reuse it."""
    from fashionops.serving.loader import load_bundle

    return load_bundle(serve_params)


@pytest.fixture(scope="module")
def client(serve_params, bundle, monkeypatch_module):
    from fashionops.serving.app import create_app

    monkeypatch_module.delenv(serve_params.serve.token_env, raising=False)
    with TestClient(create_app(serve_params, bundle=bundle)) as c:
        yield c


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.fixture(scope="module")
def items(serve_params) -> pd.DataFrame:
    return pd.read_parquet(Path(serve_params.paths.index_dir) / "items.parquet")


@pytest.fixture(scope="module")
def spec(serve_params):
    from fashionops.models.spec import ModelSpec

    return ModelSpec.read(serve_params.paths.classifier_dir)


def _image_file(params, item_id: int) -> Path:
    return Path(params.paths.raw_dir) / "images" / f"{item_id}.jpg"


def _upload(path: Path, name: str | None = None) -> dict:
    return {"file": (name or path.name, path.read_bytes(), "image/jpeg")}


def test_health_reports_models(client, items, spec):
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["source"] == "local"
    assert h["items"] == len(items)
    assert h["classes"] == len(spec.classes)
    assert h["fingerprint"].startswith("local:")
    assert h["index"]["n_items"] == len(items)
    assert h["auth"] is False
    assert h["jit"] is True


def test_classify_upload(client, serve_params, items, spec):
    item_id = int(items["id"].iloc[0])
    r = client.post("/classify?k=3", files=_upload(_image_file(serve_params, item_id)))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["label"] in spec.classes
    probs = body["top_probabilities"]
    assert len(probs) == len(body["top_labels"]) == 3 and probs == sorted(probs, reverse=True)
    assert body["top_labels"][0] == body["label"] and body["probability"] == probs[0]
    assert 0 < sum(probs) <= 1 + 1e-6
    assert body["model"]["source"] == "local" and body["model"]["version"] == "local"
    # deterministic: the same photo gives the same answer
    again = client.post("/classify", data={"top_k": "3"}, files=_upload(_image_file(serve_params, item_id))).json()
    assert (again["top_labels"], again["top_probabilities"]) == (body["top_labels"], body["top_probabilities"])


def test_classify_all_classes_sum_to_one(client, serve_params, items, spec):
    n = len(spec.classes)
    r = client.post(f"/classify?k={n}", files=_upload(_image_file(serve_params, int(items["id"].iloc[1]))))
    assert r.status_code == 200
    assert abs(sum(r.json()["top_probabilities"]) - 1.0) < 1e-4


def test_search_by_upload_finds_the_item_itself(client, serve_params, items):
    for item_id in items["id"].sample(3, random_state=1).astype(int):
        r = client.post("/search", files=_upload(_image_file(serve_params, item_id)), data={"k": "4"})
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert len(results) == 4
        d = [x["distance"] for x in results]
        assert d == sorted(d)
        # the catalogue photo itself (or a byte-identical duplicate) comes first at distance ~0
        sha = items.set_index("id").loc[item_id, "sha256"]
        same = set(items.loc[items["sha256"] == sha, "id"].astype(int))
        assert results[0]["id"] in same and results[0]["distance"] < 1e-2, results[0]


def test_search_by_item_id_json_and_form(client, items):
    item_id = int(items["id"].iloc[5])
    by_json = client.post("/search", json={"item_id": item_id, "k": 5})
    assert by_json.status_code == 200, by_json.text
    body = by_json.json()
    assert body["query"]["type"] == "item" and body["query"]["item"]["id"] == item_id
    ids = [x["id"] for x in body["results"]]
    assert len(ids) == 5 and item_id not in ids and len(set(ids)) == 5
    known = set(items["id"].astype(int))
    assert set(ids) <= known
    for x in body["results"]:
        assert x["image_url"] == f"/items/{x['id']}/image"
        assert x["name"] == items.set_index("id").loc[x["id"], "productDisplayName"]
    by_form = client.post("/search", data={"item_id": str(item_id), "k": "5"}).json()
    assert [x["id"] for x in by_form["results"]] == ids


def test_items_and_images(client, serve_params, items):
    row = items.iloc[2]
    item_id = int(row["id"])
    r = client.get(f"/items/{item_id}")
    assert r.status_code == 200
    assert r.json()["articleType"] == row["articleType"] and r.json()["name"] == row["productDisplayName"]
    img = client.get(f"/items/{item_id}/image")
    assert img.status_code == 200 and img.headers["content-type"] == "image/jpeg"
    assert img.content == _image_file(serve_params, item_id).read_bytes()


@pytest.mark.parametrize(
    "path,codes",
    [
        ("/items/999999999", {404}),
        ("/items/999999999/image", {404}),
        ("/items/-1/image", {404}),
        ("/items/abc", {422}),
        ("/items/..%2F..%2Fetc%2Fpasswd/image", {404, 422}),
        ("/items/1.jpg/image", {422}),
        ("/static/..%2F..%2Fserve.py", {404}),
    ],
)
def test_unknown_items_and_paths_never_reach_the_filesystem(client, path, codes):
    r = client.get(path)
    assert r.status_code in codes, (path, r.status_code, r.text)
    assert b"def create_app" not in r.content and b"root:" not in r.content


def test_search_unknown_item_is_404(client):
    r = client.post("/search", json={"item_id": 999999999})
    assert r.status_code == 404 and "unknown item id" in r.json()["detail"]
    assert client.post("/search", json={"item_id": "x"}).status_code == 422
    assert client.post("/search", json={}).status_code == 422


def _png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (width, height), 255).save(buf, format="PNG")
    return buf.getvalue()


def test_bad_uploads_get_clear_4xx(client, serve_params, items):
    good = _image_file(serve_params, int(items["id"].iloc[0])).read_bytes()
    cases = [
        ({"file": ("notes.txt", b"this is not an image", "text/plain")}, 400, "not an image"),
        ({"file": ("cut.jpg", good[: len(good) // 3], "image/jpeg")}, 400, "truncated"),
        ({"file": ("empty.jpg", b"", "image/jpeg")}, 400, "empty"),
        ({"file": ("bomb.png", _png(5000, 1000), "image/png")}, 413, "too large"),
    ]
    for endpoint in ("/classify", "/search"):
        for files, code, text in cases:
            r = client.post(endpoint, files=files)
            assert r.status_code == code, (endpoint, files["file"][0], r.status_code, r.text)
            assert text in r.json()["detail"], r.json()
    assert client.post("/classify", data={"k": "2"}).status_code == 422  # no file
    assert (
        client.post(
            "/classify", files=_upload(_image_file(serve_params, int(items["id"].iloc[0]))), data={"k": "0"}
        ).status_code
        == 422
    )
    assert client.post("/classify", content=b"raw", headers={"content-type": "text/plain"}).status_code == 415
    # still serving after all of that
    assert client.post("/classify", files={"file": ("ok.jpg", good, "image/jpeg")}).status_code == 200


def test_request_errors_keep_their_messages(client, serve_params, items):
    """Bad fields and bodies get one sentence in ``detail`` (what the page shows), not a list."""
    photo = _upload(_image_file(serve_params, int(items["id"].iloc[0])))
    item_id = int(items["id"].iloc[0])
    cases = [
        (dict(files=photo, data={"k": "abc"}), "/classify", 422, "k must be an integer (got 'abc')"),
        (dict(files=photo, data={"k": "51"}), "/classify", 422, "k must be between 1 and 50 (got 51)"),
        (dict(files=photo, params={"k": "0"}), "/classify", 422, "k must be between 1 and 50 (got 0)"),
        (dict(data={"k": "2"}), "/classify", 422, "no image: send a multipart form with the image in field 'file'"),
        (dict(json={"k": 2}), "/classify", 422, "no image"),
        (dict(data={"file": "not-a-file"}), "/classify", 400, "field 'file' must be a file upload"),
        (dict(json={"item_id": "x"}), "/search", 422, "item_id must be an integer (got 'x')"),
        (dict(json={"item_id": True}), "/search", 422, "item_id must be an integer"),
        (dict(json={"item_id": item_id, "k": 0}), "/search", 422, "k must be between 1 and 50 (got 0)"),
        (dict(data={"item_id": "1.5"}), "/search", 422, "item_id must be an integer (got '1.5')"),
        (dict(json=[item_id]), "/search", 400, "JSON body must be an object"),
        (
            dict(content=b"{nope", headers={"content-type": "application/json"}),
            "/search",
            400,
            "body is not valid JSON",
        ),
        (dict(content=b"x", headers={"content-type": "text/csv"}), "/search", 415, "unsupported content type"),
        (
            dict(files=[("file", ("a.jpg", b"1", "image/jpeg")), ("file", ("b.jpg", b"2", "image/jpeg"))]),
            "/search",
            400,
            "Too many files",
        ),
        (dict(data={}), "/search", 422, "nothing to search for"),
    ]
    for kwargs, endpoint, code, text in cases:
        r = client.post(endpoint, **kwargs)
        assert r.status_code == code, (endpoint, kwargs.keys(), r.status_code, r.text)
        assert isinstance(r.json()["detail"], str) and text in r.json()["detail"], (endpoint, r.json())
    # k and item_id from the query string; the body's k wins over the query's
    r = client.post("/search", params={"item_id": str(item_id), "k": "2"})
    assert r.status_code == 200 and len(r.json()["results"]) == 2
    r = client.post("/search?k=2", json={"item_id": item_id, "k": 3})
    assert r.status_code == 200 and len(r.json()["results"]) == 3
    # other validation errors keep FastAPI's own body
    assert isinstance(client.get("/items/abc").json()["detail"], list)


def test_responses_hold_exactly_the_keys_they_always_held(client, serve_params, items):
    photo = _upload(_image_file(serve_params, int(items["id"].iloc[0])))
    body = client.post("/classify", files=photo).json()
    assert set(body) == {"label", "probability", "top_labels", "top_probabilities", "attributes", "model"}
    assert set(body["model"]) == {"name", "version", "alias", "source"}  # no filesystem path
    found = client.post("/search", files=photo).json()
    assert set(found) == {"query", "results", "model"}
    assert found["query"] == {"type": "upload", "filename": f"{int(items['id'].iloc[0])}.jpg"}
    assert set(found["results"][0]) == {
        "id",
        "name",
        "masterCategory",
        "subCategory",
        "articleType",
        "gender",
        "baseColour",
        "year",
        "image_url",
        "item_url",
        "distance",
    }
    assert {"name", "version", "alias", "source", "dim", "metric"} <= set(found["model"])
    assert "path" not in found["model"]
    by_id = client.post("/search", json={"item_id": int(items["id"].iloc[0])}).json()
    assert set(by_id["query"]) == {"type", "item"}
    assert set(client.get("/health").json()) == {
        "status",
        "source",
        "alias",
        "classifier",
        "index",
        "fingerprint",
        "loaded_at",
        "items",
        "classes",
        "label_column",
        "jit",
        "reloads",
        "last_reload_error",
        "auth",
        "reload_poll_s",
    }


def test_upload_size_limit(serve_params, bundle, items):
    from fashionops.serving.app import create_app

    p = serve_params.model_copy(deep=True)
    p.serve.max_upload_mb = 0.05  # 52 KB
    with TestClient(create_app(p, bundle=bundle)) as c:
        rng = np.random.default_rng(0)
        noise = Image.fromarray(rng.integers(0, 255, (300, 300, 3), dtype=np.uint8))
        buf = io.BytesIO()
        noise.save(buf, format="PNG")  # ~270 KB of incompressible pixels
        assert len(buf.getvalue()) > 0.05 * 1024 * 1024 + 64 * 1024
        r = c.post("/classify", files={"file": ("big.png", buf.getvalue(), "image/png")})
        assert r.status_code == 413 and "too large" in r.json()["detail"]
        # a file just over the limit, inside the multipart allowance, is caught after parsing too
        small_over = b"\xff\xd8" + bytes(int(0.05 * 1024 * 1024) + 10)
        r = c.post("/search", files={"file": ("x.jpg", small_over, "image/jpeg")})
        assert r.status_code == 413
        good = _image_file(p, int(items["id"].iloc[0]))
        assert c.post("/classify", files=_upload(good)).status_code == 200


def test_bearer_token(serve_params, bundle, items, monkeypatch):
    from fashionops.serving.app import create_app

    monkeypatch.setenv(serve_params.serve.token_env, "s3cret-token")
    item_id = int(items["id"].iloc[0])
    with TestClient(create_app(serve_params, bundle=bundle)) as c:
        assert c.get("/health").status_code == 200  # public
        assert c.get("/").status_code == 200 and c.get("/openapi.json").status_code == 200
        assert c.post("/search", json={"item_id": item_id}).status_code == 401
        bad = c.post("/search", json={"item_id": item_id}, headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401 and bad.headers["www-authenticate"] == "Bearer"
        assert c.post("/reload").status_code == 401
        assert c.get(f"/items/{item_id}/image").status_code == 401
        ok = c.post("/search", json={"item_id": item_id}, headers={"Authorization": "Bearer s3cret-token"})
        assert ok.status_code == 200
        # images are plain <img> loads: the page sets the token as a cookie
        c.cookies.set("fashionops_token", "s3cret-token")
        assert c.get(f"/items/{item_id}/image").status_code == 200


def test_openapi_documents_the_api(client):
    spec = client.get("/openapi.json").json()
    for path in ("/classify", "/search", "/items/{item_id}", "/items/{item_id}/image", "/health", "/reload"):
        assert path in spec["paths"], path
    body = spec["paths"]["/search"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in body and "application/json" in body
    assert client.get("/docs").status_code == 200


def _schema(spec: dict, node: dict) -> dict:
    """``node`` with a ``$ref`` followed into ``components.schemas``."""
    ref = node.get("$ref")
    return spec["components"]["schemas"][ref.rsplit("/", 1)[-1]] if ref else node


def _types(spec: dict, node: dict) -> set:
    """The JSON types a property may have (``anyOf`` branches included)."""
    node = _schema(spec, node)
    return {t.get("type") for t in node.get("anyOf", [node])}


def test_openapi_is_generated_from_the_request_and_response_models(client):
    """Generated by FastAPI from the routes' models: the request fields of /classify and /search
    (both media types of /search), query parameters, and the response and error models."""
    spec = client.get("/openapi.json").json()
    classify = spec["paths"]["/classify"]["post"]
    form = _schema(spec, classify["requestBody"]["content"]["multipart/form-data"]["schema"])
    assert set(form["properties"]) == {"file", "top_k", "k"} and form["required"] == ["file"]
    assert _types(spec, form["properties"]["file"]) == {"string"}
    k = next(t for t in form["properties"]["top_k"]["anyOf"] if t.get("type") == "integer")
    assert (k["minimum"], k["maximum"]) == (1, 50)
    assert form["properties"]["k"].get("deprecated") is True  # the old name, still accepted
    assert {p["name"] for p in classify["parameters"] if p["in"] == "query"} == {"top_k", "k"}

    search = spec["paths"]["/search"]["post"]
    content = search["requestBody"]["content"]
    upload = _schema(spec, content["multipart/form-data"]["schema"])
    assert set(upload["properties"]) == {"file", "item_id", "top_k", "k"} and "required" not in upload
    by_item = _schema(spec, content["application/json"]["schema"])
    assert set(by_item["properties"]) == {"item_id", "top_k", "k"}
    assert "integer" in _types(spec, by_item["properties"]["item_id"])
    assert {p["name"] for p in search["parameters"] if p["in"] == "query"} == {"top_k", "k", "item_id"}

    def response(op: dict, code: str) -> dict:
        return _schema(spec, op["responses"][code]["content"]["application/json"]["schema"])

    assert response(classify, "200")["title"] == "ClassifyResponse"
    assert {"label", "probability", "top_labels", "top_probabilities", "model"} <= set(
        response(classify, "200")["properties"]
    )
    assert response(search, "200")["title"] == "SearchResponse"
    hit = _schema(spec, response(search, "200")["properties"]["results"]["items"])
    assert {"id", "name", "articleType", "image_url", "distance"} <= set(hit["properties"])
    for op in (classify, search):
        for code in ("400", "413", "415", "422"):
            assert response(op, code)["title"] == "ErrorBody", code
    assert response(spec["paths"]["/health"]["get"], "200")["title"] == "Health"
    assert response(spec["paths"]["/reload"]["post"], "200")["title"] == "ReloadResult"
    assert response(spec["paths"]["/items/{item_id}"]["get"], "200")["title"] == "Item"
    assert "/" not in spec["paths"]  # the web page is not part of the API


def _rebuild_index(params, n_trees: int) -> None:
    """A real new ANN index over the served classifier's catalogue embeddings, written the way
    the index stage writes it (``write_index_dir``: build aside, then swap the directory)."""
    from fashionops.search.store import CLASS_PROBS_FILE, PROJECTION_FILE, backend_of, write_index_dir
    from fashionops.search.vectors import Projection

    d = Path(params.paths.index_dir)
    meta = json.loads((d / "index_meta.json").read_text())
    vectors = np.load(d / "embeddings.npy")
    projection = Projection.load(d / PROJECTION_FILE) if meta.get("projection") else None
    class_probs = np.load(d / CLASS_PROBS_FILE) if (d / CLASS_PROBS_FILE).is_file() else None
    index_vectors = projection.apply(vectors) if projection is not None else vectors
    items = pd.read_parquet(d / "items.parquet")
    index = backend_of(meta).build(index_vectors, meta["metric"], n_trees, int(meta.get("seed", 42)))
    write_index_dir(d, vectors, index, items, {**meta, "n_trees": n_trees}, projection, class_probs)
    index.unload()


def test_reload_swaps_pair_atomically_and_refuses_mismatch(tiny_pipeline, tmp_path, items, monkeypatch):
    from fashionops.serving.app import create_app

    p = serving_copy(tiny_pipeline, tmp_path)
    item_id = int(items["id"].iloc[3])
    monkeypatch.setenv(p.serve.token_env, "reload-token")  # POST /reload needs a configured token
    with TestClient(create_app(p), headers={"Authorization": "Bearer reload-token"}) as c:
        before = c.get("/health").json()
        r = c.post("/reload?force=false")
        assert r.status_code == 200 and r.json()["reloaded"] is False  # nothing changed

        # Requests keep succeeding while a new pair is built and swapped in.
        errors: list[str] = []
        stop = threading.Event()

        def hammer() -> None:
            while not stop.is_set():
                resp = c.post("/search", json={"item_id": item_id, "k": 3})
                if resp.status_code != 200 or len(resp.json()["results"]) != 3:
                    errors.append(resp.text)

        worker = threading.Thread(target=hammer)
        worker.start()
        try:
            _rebuild_index(p, n_trees=3)
            r = c.post("/reload?force=false")
        finally:
            stop.set()
            worker.join(timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["reloaded"] is True and r.json()["changed"] is True
        after = c.get("/health").json()
        assert after["fingerprint"] != before["fingerprint"] and after["index"]["n_trees"] == 3
        assert after["reloads"] == 1
        assert not errors, errors[:3]

        # An index built by another model is refused; the old pair keeps serving.
        meta_path = Path(p.paths.index_dir) / "index_meta.json"
        meta = json.loads(meta_path.read_text())
        meta["embedding_model"]["backbone"] = "some_other_backbone"
        meta_path.write_text(json.dumps(meta))
        r = c.post("/reload")
        assert r.status_code == 409 and "not a matching pair" in r.json()["detail"]
        h = c.get("/health").json()
        assert h["fingerprint"] == after["fingerprint"] and "not a matching pair" in h["last_reload_error"]
        assert c.post("/search", json={"item_id": item_id}).status_code == 200


def test_reload_poll_picks_up_new_index(tiny_pipeline, tmp_path):
    from fashionops.serving.app import create_app

    p = serving_copy(tiny_pipeline, tmp_path)
    p.serve.reload_poll_s = 0.2
    with TestClient(create_app(p)) as c:
        before = c.get("/health").json()["fingerprint"]
        _rebuild_index(p, n_trees=4)
        deadline = time.monotonic() + 30
        h = c.get("/health").json()
        while h["fingerprint"] == before and time.monotonic() < deadline:
            time.sleep(0.2)
            h = c.get("/health").json()
        assert h["fingerprint"] != before and h["index"]["n_trees"] == 4


def test_pull_directory_source(tiny_pipeline, tmp_path, items):
    """A directory laid out as `fashionops pull` writes it (manifest + both pyfunc trees)."""
    from fashionops.serving.loader import ServeError, load_bundle_from_pull

    src = serving_copy(tiny_pipeline, tmp_path / "src")
    pull = tmp_path / "pull"
    shutil.copytree(src.paths.classifier_dir, pull / "classifier" / "artifacts" / "model_classifier")
    shutil.copytree(src.paths.index_dir, pull / "visual_search" / "artifacts" / "index")
    shutil.copytree(src.paths.classifier_dir, pull / "visual_search" / "artifacts" / "model_classifier")
    manifest = {
        "alias": "champion",
        "classifier": {"name": "fashion-classifier", "version": "7", "run_id": "r1", "dir": "classifier", "tags": {}},
        "index": {
            "name": "fashion-visual-search",
            "version": "3",
            "run_id": "r1",
            "dir": "visual_search",
            "tags": {"classifier_version": "7"},
        },
    }
    (pull / "manifest.json").write_text(json.dumps(manifest))
    images = Path(tiny_pipeline.paths.raw_dir) / "images"
    b = load_bundle_from_pull(pull, images, tiny_pipeline.register)
    assert b.source == "dir" and b.alias == "champion"
    assert b.classifier["version"] == "7" and b.index["version"] == "3"
    assert b.embedder is b.predictor  # same weights: loaded once
    assert len(b.search_item(int(items["id"].iloc[0]), 3)) == 3

    manifest["index"]["tags"]["classifier_version"] = "6"
    (pull / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ServeError, match="not a matching pair"):
        load_bundle_from_pull(pull, images, tiny_pipeline.register)


def _read_status(sock) -> bytes:
    data = b""
    sock.settimeout(10)
    while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
        part = sock.recv(65536)
        if not part:
            break
        data += part
    return data


def test_live_server_stops_oversized_streams_early(serve_params, bundle, items):
    """On a real uvicorn server: a chunked upload over serve.max_upload_mb gets 413 while it is
    still being sent (the body is never buffered whole), a too-large Content-Length gets 413
    before any body, and the server keeps serving."""
    import select
    import socket
    from urllib.parse import urlparse

    import httpx

    from fashionops.serving.app import create_app, serve_in_thread

    p = serve_params.model_copy(deep=True)
    p.serve.max_upload_mb = 1.0
    total = 40 * 1024 * 1024
    with serve_in_thread(create_app(p, bundle=bundle)) as url:
        host, port = urlparse(url).hostname, urlparse(url).port
        sock = socket.create_connection((host, port), timeout=10)
        sock.sendall(
            b"POST /classify HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: multipart/form-data; boundary=XyZ\r\n\r\n"
        )
        part = (
            b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="big.jpg"\r\n'
            b"Content-Type: image/jpeg\r\n\r\n"
        )
        sent, chunk = 0, bytes(64 * 1024)
        try:
            sock.sendall(b"%x\r\n%s\r\n" % (len(part), part))
            while sent < total:
                if select.select([sock], [], [], 0)[0]:
                    break  # the server answered already
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        response = _read_status(sock)
        sock.close()
        assert response.startswith(b"HTTP/1.1 413"), response[:200]
        assert b"too large" in response
        assert sent < total / 4, f"server let {sent} bytes through before refusing"

        sock = socket.create_connection((host, port), timeout=10)
        sock.sendall(
            b"POST /search HTTP/1.1\r\nHost: test\r\nContent-Length: 500000000\r\n"
            b"Content-Type: multipart/form-data; boundary=XyZ\r\n\r\n"
        )
        response = _read_status(sock)
        sock.close()
        assert response.startswith(b"HTTP/1.1 413"), response[:200]

        r = httpx.post(f"{url}/search", json={"item_id": int(items["id"].iloc[0]), "k": 2}, timeout=30)
        assert r.status_code == 200 and len(r.json()["results"]) == 2


def test_registry_source_serves_champion_and_follows_promotion(tiny_pipeline, tmp_path, items, monkeypatch):
    """Models by alias from a real MLflow registry (own SQLite store): @champion is served, a
    later promotion is picked up by a non-forced reload (what the poll does), and /health tells."""
    from fashionops.registry.aliases import promote
    from fashionops.registry.register import run_register
    from fashionops.serving.app import create_app

    p = serving_copy(tiny_pipeline, tmp_path / "models")
    p.tracking.tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    p.tracking.artifact_location = str(tmp_path / "artifacts")
    # the tiny pipeline's reports (evaluate metrics, run file) in a copy: register writes there
    shutil.copytree(tiny_pipeline.paths.reports_dir, tmp_path / "reports")
    p.paths.reports_dir = str(tmp_path / "reports")
    p.serve.source = "registry"

    def register() -> dict:
        return run_register(p.register, p.paths, p.tracking, embedder_dir=p.index.embedder_dir)

    first = register()
    monkeypatch.setenv(p.serve.token_env, "reload-token")  # POST /reload needs a configured token
    with TestClient(create_app(p), headers={"Authorization": "Bearer reload-token"}) as c:
        h = c.get("/health").json()
        assert h["source"] == "registry" and h["alias"] == "champion"
        assert h["classifier"]["name"] == p.register.classifier_name and h["index"]["name"] == p.register.index_name
        v1 = h["classifier"]["version"]
        assert c.post("/search", json={"item_id": int(items["id"].iloc[0]), "k": 2}).status_code == 200
        assert c.post("/reload?force=false").json()["reloaded"] is False

        second = register()  # same metrics: registered, not promoted
        assert c.post("/reload?force=false").json()["reloaded"] is False
        assert second["decision"] == "challenger", second["reason"]
        new_version = int(second["classifier"]["version"])
        assert str(new_version) != str(first["classifier"]["version"])
        promote(p.register, p.tracking, version=new_version, reason="test: promote the newer pair")
        r = c.post("/reload?force=false")
        assert r.status_code == 200 and r.json()["reloaded"] is True, r.text
        h2 = c.get("/health").json()
        assert h2["classifier"]["version"] == str(new_version) != v1
        assert h2["index"]["version"] != h["index"]["version"]
        body = c.post("/classify", files=_upload(_image_file(p, int(items["id"].iloc[0])))).json()
        assert body["model"]["version"] == str(new_version) and body["model"]["alias"] == "champion"
