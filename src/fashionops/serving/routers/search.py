"""``POST /search``: the catalogue items most similar to an uploaded photo or to a catalogue item.

Two routes on the one path (see :mod:`fashionops.serving.routing`): the JSON variant first (it
matches only ``application/json``), then the upload form, which takes every other request.
Both end in :func:`answer`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException
from fastapi.concurrency import run_in_threadpool

from fashionops.serving.bundle import ModelBundle
from fashionops.serving.deps import Bundle, SearchInput, search_form_input, search_json_input
from fashionops.serving.errors import error_responses
from fashionops.serving.recording import Recorder
from fashionops.serving.routing import JsonRoute, UploadRoute
from fashionops.serving.schemas import SearchQuery, SearchResponse

router = APIRouter(route_class=UploadRoute)
SUMMARY = "Find similar catalogue items (upload or item_id)"
ERRORS = error_responses(400, 401, 404, 413, 415, 422)


async def answer(query: SearchInput, bundle: ModelBundle, recorder: Recorder = None) -> SearchResponse:
    """Search by the uploaded image if there is one, else by the catalogue item."""
    if query.image is not None:
        results = await run_in_threadpool(bundle.search_image, query.image, query.k)
        if recorder is not None:
            recorder.submit(bundle, query.image, "serve")
        found = SearchQuery(type="upload", filename=query.filename)
    elif query.item_id is not None:
        item = bundle.item(query.item_id)
        if item is None:
            raise HTTPException(404, f"unknown item id {query.item_id}")
        results = await run_in_threadpool(bundle.search_item, query.item_id, query.k)
        found = SearchQuery(type="item", item=item)
    else:
        raise HTTPException(422, "nothing to search for: send an image in field 'file' or an item_id")
    return SearchResponse.model_validate({"query": found, "results": results, "model": bundle.index_answer()})


async def search_by_json(query: Annotated[SearchInput, Depends(search_json_input)], bundle: Bundle) -> SearchResponse:
    """The items most similar to catalogue item ``item_id`` (the item itself left out)."""
    return await answer(query, bundle)


# first, so that it takes the JSON requests before the form route takes everything else
router.add_api_route(
    "/search",
    search_by_json,
    methods=["POST"],
    summary=SUMMARY,
    responses=ERRORS,
    response_model_exclude_unset=True,
    route_class_override=JsonRoute,
)


@router.post("/search", summary=SUMMARY, response_model_exclude_unset=True, responses=ERRORS)
async def search(
    query: Annotated[SearchInput, Depends(search_form_input)], bundle: Bundle, recorder: Recorder
) -> SearchResponse:
    """The ``top_k`` catalogue items most similar to the uploaded photo in ``file`` (encoded as the
    index's items were, then re-ranked by category), or to catalogue item ``item_id`` (form field,
    JSON body or query string). Results are nearest first, each with its distance."""
    return await answer(query, bundle, recorder)
