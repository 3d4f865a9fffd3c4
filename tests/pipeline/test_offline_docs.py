"""The served HTML loads nothing from the internet: ``/docs``, ``/redoc``, the OAuth2 redirect page
and the web page reference only this server's files, which it serves; in headless Chromium that
can resolve no host but the loopback, Swagger UI and ReDoc render the API of the real app over
the tiny pipeline's models (a real uvicorn server).
"""

from __future__ import annotations

import os
import re

import pytest
from fastapi.testclient import TestClient

from fashionops.data.validation.docs_offline import remote_loads
from offline_browser import rendered_dom

PAGES = ("/", "/docs", "/redoc", "/docs/oauth2-redirect")
_REF = re.compile(r'<(?:script|link|img)\b[^>]*?\b(?:src|href)="([^"]+)"', re.IGNORECASE)


@pytest.fixture(scope="module")
def params(tiny_pipeline):
    p = tiny_pipeline.model_copy(deep=True)
    p.serve.source = "local"
    p.serve.jit = False  # the pages, not inference, are under test
    p.serve.reload_poll_s = 0
    return p


def test_served_pages_reference_only_served_local_files(params, monkeypatch):
    from fashionops.serving.app import create_app
    from fashionops.serving.docs import asset_urls

    monkeypatch.setenv(params.serve.token_env, "offline-token")  # the docs and their files stay public
    with TestClient(create_app(params)) as client:
        refs: set[str] = set()
        for path in PAGES:
            r = client.get(path)
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), path
            assert remote_loads(r.text) == [], path
            assert "http" not in r.headers["content-security-policy"], path  # no other origin allowed
            refs.update(_REF.findall(r.text))
        assert set(asset_urls()) <= refs  # Swagger UI's script, style and favicon, ReDoc's script
        for ref in sorted(refs):
            r = client.get(ref)
            assert r.status_code == 200 and len(r.content) > 100, ref
        docs_csp = client.get("/docs").headers["content-security-policy"]
        assert "script-src 'self' 'unsafe-inline'" in docs_csp and "frame-ancestors 'none'" in docs_csp


def test_swagger_ui_and_redoc_render_offline(params):
    from fashionops.serving.app import create_app, serve_in_thread

    os.environ.pop(params.serve.token_env, None)
    with serve_in_thread(create_app(params)) as url:
        swagger = rendered_dom(url + "/docs")
        redoc = rendered_dom(url + "/redoc")
    # Swagger UI built one block per operation from /openapi.json
    assert swagger.count("opblock-summary-path") >= 5 and "/classify" in swagger
    assert "Classify an uploaded product photo" in redoc and "/search" in redoc
