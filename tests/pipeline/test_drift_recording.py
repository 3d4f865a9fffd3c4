"""The server records what it saw when `monitor.record_requests` is on (and only then): real
uvicorn-free FastAPI app over the tiny pipeline's models, real catalogue uploads."""

from __future__ import annotations

import pytest
from _workspace import serving_copy
from fastapi.testclient import TestClient


@pytest.fixture(scope="module")
def uploads(small_catalogue):
    images = sorted((small_catalogue / "images").glob("*.jpg"))[:3]
    return [(p.stem, p.read_bytes()) for p in images]


@pytest.mark.parametrize("record", [True, False])
def test_server_records_requests_only_when_opted_in(tiny_pipeline, tmp_path, uploads, record):
    from fashionops.monitoring.store import load_window
    from fashionops.serving.app import create_app

    p = serving_copy(tiny_pipeline, tmp_path / "models")
    p.monitor.store = str(tmp_path / "observations.sqlite")
    p.monitor.record_requests = record
    with TestClient(create_app(p)) as c:
        for name, data in uploads[:2]:
            r = c.post("/classify", files={"file": (f"{name}.jpg", data, "image/jpeg")})
            assert r.status_code == 200, r.text
        r = c.post("/search", files={"file": ("q.jpg", uploads[2][1], "image/jpeg")})
        assert r.status_code == 200, r.text
        r = c.post("/search", json={"item_id": int(uploads[0][0]), "top_k": 2})  # no image: nothing to record
        assert r.status_code == 200, r.text
        recorder = c.app.state.recorder
        if record:
            recorder.flush()
            labels = [r.json()]  # the answer is unchanged by recording
            assert labels
    if not record:
        assert recorder is None
        assert not (tmp_path / "observations.sqlite").exists()
        return
    rows = load_window(p.monitor.store)
    assert len(rows) == 3 and set(rows["source"]) == {"serve"}
    assert rows["predicted"].notna().all() and rows["confidence"].between(0, 1).all()
    assert all(len(v) == p.monitor.projection_dim for v in rows["projection"])
    assert (rows["height"] == 80).all() and (rows["width"] == 60).all()  # the catalogue's own size
    assert rows["brightness"].between(0, 255).all() and (rows["colourfulness"] >= 0).all()
