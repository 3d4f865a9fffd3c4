"""``POST /classify``: a product photo -> its predicted class, the ``top_k`` classes and the model."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool

from fashionops.serving.deps import Bundle, ImageQuery, classify_input
from fashionops.serving.errors import error_responses
from fashionops.serving.recording import Recorder
from fashionops.serving.routing import UploadRoute
from fashionops.serving.schemas import ClassifyResponse

router = APIRouter(route_class=UploadRoute)


@router.post(
    "/classify",
    summary="Classify an uploaded product photo",
    response_model_exclude_unset=True,
    responses=error_responses(400, 401, 413, 415, 422),
)
async def classify(
    query: Annotated[ImageQuery, Depends(classify_input)], bundle: Bundle, recorder: Recorder
) -> ClassifyResponse:
    """The photo's predicted class and probability, the ``top_k`` most probable classes and their
    probabilities (``top_labels``, ``top_probabilities``: the classifier pyfunc's output names),
    every attribute the classifier tags with its probability (``attributes``, the primary first),
    and the classifier that answered (registry version, alias, source)."""
    result = await run_in_threadpool(bundle.classify, query.image, query.k)
    if recorder is not None:
        recorder.submit(bundle, query.image, "serve")
    return ClassifyResponse.model_validate(
        {
            "label": result["label"],
            "probability": result["probability"],
            "top_labels": [t["label"] for t in result["top"]],
            "top_probabilities": [t["probability"] for t in result["top"]],
            "attributes": result["attributes"],
            "model": bundle.classifier_answer(),
        }
    )
