"""``/docs`` (Swagger UI) and ``/redoc`` with their scripts and styles served by the app itself.

FastAPI's own pages load Swagger UI and ReDoc from a CDN and stay blank offline. These are the
same pages (FastAPI's documented self-hosting recipe: ``docs_url=None``, ``redoc_url=None``,
``get_swagger_ui_html``/``get_redoc_html`` pointed at local files), with the files of the
``fastapi-offline`` package (Swagger UI's bundle and CSS, ReDoc's standalone bundle, a favicon)
mounted under ``/static/docs/`` (public like the rest of ``/static/``). ReDoc's Google fonts are
left out: it falls back to the browser's fonts.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"
ASSETS_URL = "/static/docs"
# file name in the fastapi-offline package -> what it is
ASSETS = {
    "swagger-ui-bundle.js": "Swagger UI script",
    "swagger-ui.css": "Swagger UI style",
    "redoc.standalone.js": "ReDoc script",
    "favicon.png": "favicon",
}
# Swagger UI's online validator badge would call validator.swagger.io: off.
SWAGGER_PARAMETERS = {"validatorUrl": None}


def assets_dir() -> Path:
    """The folder of the docs assets (the installed ``fastapi_offline/static``)."""
    return Path(str(files("fastapi_offline") / "static"))


def asset_urls() -> list[str]:
    """The URL path of every docs asset (what the pages reference)."""
    return [f"{ASSETS_URL}/{name}" for name in ASSETS]


def add_offline_docs(app: FastAPI) -> None:
    """Mount the docs assets and add ``/docs``, its OAuth2 redirect and ``/redoc`` to ``app``
    (created with ``docs_url=None, redoc_url=None``). Mount it before a ``/static`` mount."""
    app.mount(ASSETS_URL, StaticFiles(directory=assets_dir()), name="docs-static")
    title = app.title

    def openapi_url(request: Request) -> str:
        # behind a proxy that strips a prefix, the page's own URLs need that prefix back
        return f"{request.scope.get('root_path', '')}{app.openapi_url or '/openapi.json'}"

    def asset(request: Request, name: str) -> str:
        return f"{request.scope.get('root_path', '')}{ASSETS_URL}/{name}"

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url(request),
            title=f"{title} - Swagger UI",
            oauth2_redirect_url=f"{request.scope.get('root_path', '')}{OAUTH2_REDIRECT_URL}",
            swagger_js_url=asset(request, "swagger-ui-bundle.js"),
            swagger_css_url=asset(request, "swagger-ui.css"),
            swagger_favicon_url=asset(request, "favicon.png"),
            swagger_ui_parameters=SWAGGER_PARAMETERS,
        )

    @app.get(OAUTH2_REDIRECT_URL, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(REDOC_URL, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url(request),
            title=f"{title} - ReDoc",
            redoc_js_url=asset(request, "redoc.standalone.js"),
            redoc_favicon_url=asset(request, "favicon.png"),
            with_google_fonts=False,
        )
