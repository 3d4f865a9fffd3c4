"""``GET /items/{id}`` and ``GET /items/{id}/image``: catalogue metadata and photos of indexed items."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

from fashionops.serving.deps import Bundle
from fashionops.serving.errors import error_responses
from fashionops.serving.schemas import Item

router = APIRouter()


@router.get("/items/{item_id}", summary="Catalogue item metadata", responses=error_responses(401, 404))
async def get_item(item_id: int, bundle: Bundle) -> Item:
    item = bundle.item(item_id)
    if item is None:
        raise HTTPException(404, f"unknown item id {item_id}")
    return item


@router.get(
    "/items/{item_id}/image",
    summary="Catalogue item image (JPEG)",
    response_class=FileResponse,
    responses=error_responses(401, 404),
)
async def get_item_image(item_id: int, bundle: Bundle) -> FileResponse:
    # only ids in the index, only files inside the images dir (ModelBundle.image_path)
    path = bundle.image_path(item_id)
    if path is None:
        raise HTTPException(404, f"no image for item id {item_id}")
    return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "public, max-age=3600"})
