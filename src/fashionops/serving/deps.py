"""FastAPI dependencies: what a route gets from the app (the current bundle, the settings) and from
the request (the decoded upload, ``top_k``, ``item_id``), ready to use.

The request dependencies declare the fields a route takes (form/JSON models and query
parameters), so those show in the route's OpenAPI entry. ``top_k`` (or its deprecated old name
``k``) and ``item_id`` may come in the body or the query string; the body wins, ``top_k`` over
``k``, then ``serve.top_k`` is the default.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated

import numpy as np
from fastapi import Body, Depends, File, HTTPException, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool

from fashionops.config import ServeConfig
from fashionops.data.imaging import load_rgb
from fashionops.errors import DataError
from fashionops.serving.bundle import BundleHolder, ModelBundle
from fashionops.serving.schemas import ClassifyForm, ItemId, OldK, SearchByItem, SearchForm, TopK, used


@dataclass(frozen=True)
class ServingState:
    """What the routes share (``app.state.serving``): the bundle holder, settings and API token."""

    holder: BundleHolder
    settings: ServeConfig
    token: str | None


def _state(request: Request) -> ServingState:
    state: ServingState = request.app.state.serving
    return state


# Each reads app.state itself: a dependency that depends on another costs a resolution per request.
async def serving_state(request: Request) -> ServingState:
    return _state(request)


async def bundle_holder(request: Request) -> BundleHolder:
    return _state(request).holder


async def current_bundle(request: Request) -> ModelBundle:
    """The pair this request uses from start to end (taken once: a reload swaps whole pairs)."""
    return _state(request).holder.current


async def serve_settings(request: Request) -> ServeConfig:
    return _state(request).settings


State = Annotated[ServingState, Depends(serving_state)]
Holder = Annotated[BundleHolder, Depends(bundle_holder)]
Bundle = Annotated[ModelBundle, Depends(current_bundle)]
Settings = Annotated[ServeConfig, Depends(serve_settings)]
QueryTopK = Annotated[TopK, Query(description="how many results, when the body does not say")]
QueryOldK = Annotated[OldK, Query(description="deprecated: the old name of top_k", deprecated=True)]
QueryItemId = Annotated[ItemId, Query(description="a catalogue item id, when the body does not say")]


@dataclass(frozen=True)
class ImageQuery:
    """A decoded upload to classify: (H, W, 3) uint8 pixels, its file name and ``k``."""

    image: np.ndarray
    filename: str
    k: int


@dataclass(frozen=True)
class SearchInput:
    """What to search for: an uploaded image (wins) or a catalogue item id, and ``k``."""

    image: np.ndarray | None
    filename: str | None
    item_id: int | None
    k: int


def _k(given: tuple[int | None, ...], settings: ServeConfig) -> int:
    """The first of ``given`` that was sent (body ``top_k``, body ``k``, query ``top_k``, query
    ``k``), else ``serve.top_k``; only the one used is parsed."""
    k = used(next((value for value in given if value is not None), None))
    return settings.top_k if k is None else k


async def read_upload(upload: UploadFile, settings: ServeConfig) -> tuple[bytes, str]:
    """An uploaded file's bytes and printable name; 413 over ``serve.max_upload_mb``."""
    max_bytes = int(settings.max_upload_mb * 1024 * 1024)
    data = await upload.read(max_bytes + 1)
    await upload.close()
    if len(data) > max_bytes:
        raise HTTPException(413, f"upload too large: more than {settings.max_upload_mb:g} MB")
    # the name only labels error messages; keep it short and printable
    name = "".join(ch for ch in (upload.filename or "upload") if ch.isprintable())[:100]
    return data, name or "upload"


async def decode_image(data: bytes, name: str, settings: ServeConfig) -> np.ndarray:
    """Upload bytes -> (H, W, 3) uint8 RGB; 400 if not an image, 413 over ``serve.max_pixels``."""
    try:
        return await run_in_threadpool(load_rgb, data, max_pixels=settings.max_pixels, name=name)
    except DataError as exc:
        text = str(exc)
        # load_rgb says "image too large" for a pixel bomb: that is a size limit, not bad syntax.
        if "too large" in text:
            raise HTTPException(413, too_many_pixels(text, name, settings.max_pixels)) from None
        raise HTTPException(400, text) from None


def too_many_pixels(reason: str, name: str, max_pixels: int) -> str:
    """The 413 message of a pixel bomb, naming the server's own limit (PIL's refusal of a huge
    header quotes PIL's limit, which is not the one this server applies)."""
    pixels = re.search(r"(\d+) pixels", reason)
    size = f"{int(pixels.group(1))} pixels" if pixels else "more pixels than allowed"
    return f"{name}: image too large: {size} (limit serve.max_pixels = {max_pixels} pixels)"


async def classify_input(
    form: Annotated[ClassifyForm, File()], settings: Settings, top_k: QueryTopK = None, k: QueryOldK = None
) -> ImageQuery:
    """``POST /classify``: the uploaded photo, decoded, and ``top_k``."""
    data, name = await read_upload(form.file, settings)
    top_k = _k((form.top_k, form.k, top_k, k), settings)
    return ImageQuery(await decode_image(data, name, settings), name, top_k)


async def search_form_input(
    form: Annotated[SearchForm, File()],
    settings: Settings,
    top_k: QueryTopK = None,
    k: QueryOldK = None,
    item_id: QueryItemId = None,
) -> SearchInput:
    """``POST /search`` with a form: an uploaded photo, or an ``item_id`` (form field or query)."""
    upload = await read_upload(form.file, settings) if form.file is not None else None
    top_k = _k((form.top_k, form.k, top_k, k), settings)
    if upload is not None:
        data, name = upload
        return SearchInput(await decode_image(data, name, settings), name, None, top_k)
    return SearchInput(None, None, used(form.item_id if form.item_id is not None else item_id), top_k)


async def search_json_input(
    body: Annotated[SearchByItem, Body()],
    settings: Settings,
    top_k: QueryTopK = None,
    k: QueryOldK = None,
    item_id: QueryItemId = None,
) -> SearchInput:
    """``POST /search`` with a JSON body: ``{"item_id": ..., "top_k": ...}`` (or ``?item_id=``)."""
    top_k = _k((body.top_k, body.k, top_k, k), settings)
    # a JSON null item_id is "no item id", not "the query's"
    return SearchInput(None, None, used(body.item_id if "item_id" in body.model_fields_set else item_id), top_k)
