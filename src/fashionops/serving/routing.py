"""How the upload endpoints read request bodies, and how one path takes two kinds of body.

FastAPI parses and documents one body type per route. ``POST /search`` takes a multipart upload
or a JSON body, so it is two routes on one path, each with a typed signature:

- a :class:`JsonRoute`, registered first, matches only ``application/json`` requests;
- an :class:`UploadRoute` takes the rest (multipart, urlencoded, no body; other types get 415).

Both read the body once, before FastAPI does (:func:`read_body`): the form with the API's limits
(one file, ten fields), JSON checked to be an object, each with the API's own error messages.
Starlette keeps what was read on the request, so FastAPI's own parse reuses it.

The OpenAPI document has one operation per path and method: :func:`document_json_variants`
adds each ``JsonRoute``'s generated request body to the operation of its path, so ``/search``
lists both media types, each from its route's signature.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute, APIRouter
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.routing import Match

from fashionops.serving.middleware import BodyRefused, Scope

JSON = "application/json"
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
MAX_FORM_FILES = 1
MAX_FORM_FIELDS = 10


def media_type(content_type: str) -> str:
    """``multipart/form-data; boundary=...`` -> ``multipart/form-data``."""
    return content_type.split(";", 1)[0].strip().lower()


async def read_body(request: Request) -> None:
    """Read the body by its content type, refusing what the API refuses (400, 415)."""
    content_type = request.headers.get("content-type", "")
    kind = media_type(content_type)
    if kind == JSON:
        try:
            body = await request.json()
        except ValueError:
            raise HTTPException(400, "body is not valid JSON") from None
        except RecursionError:  # the parser recursed past Python's limit: nothing we accept nests so
            raise HTTPException(400, "JSON body is nested too deeply") from None
        if not isinstance(body, dict):
            raise HTTPException(400, "JSON body must be an object")
    elif kind in FORM_TYPES:
        try:
            await request.form(max_files=MAX_FORM_FILES, max_fields=MAX_FORM_FIELDS)
        except BodyRefused:  # the body passed a limit while it was read: 413 / 408
            raise
        except Exception as exc:  # noqa: BLE001 - any multipart parse error is the client's
            raise HTTPException(400, f"cannot parse the form: {exc}") from None
    elif content_type:
        raise HTTPException(415, f"unsupported content type {content_type!r}: use multipart/form-data or JSON")


class UploadRoute(APIRoute):
    """A route taking an upload: the body is read by :func:`read_body` before FastAPI parses it."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def read_then_handle(request: Request) -> Response:
            await read_body(request)
            return await handler(request)

        return read_then_handle


class JsonRoute(UploadRoute):
    """The JSON variant of an upload path: matches only ``application/json`` requests."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child_scope = super().matches(scope)
        if match is Match.FULL and media_type(Headers(scope=scope).get("content-type", "")) != JSON:
            return Match.NONE, {}
        return match, child_scope


def document_json_variants(app: FastAPI, routers: Iterable[APIRouter]) -> None:
    """Make ``app.openapi()`` list each ``JsonRoute``'s JSON body beside its path's other body."""
    variants = [r for router in routers for r in router.routes if isinstance(r, JsonRoute)]
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        for route in variants:
            part = get_openapi(title=app.title, version=app.version, routes=[route])
            for method, operation in part["paths"][route.path_format].items():
                target = schema["paths"][route.path_format][method]
                content = target.setdefault("requestBody", {}).setdefault("content", {})
                content.update(operation["requestBody"]["content"])
            models = part.get("components", {}).get("schemas", {})
            for name, model in models.items():
                schema.setdefault("components", {}).setdefault("schemas", {}).setdefault(name, model)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
