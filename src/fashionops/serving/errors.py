"""Error responses: the API's ``{"detail": "..."}`` bodies and their OpenAPI docs.

Routes raise ``HTTPException(status, detail)``; request fields that do not parse raise their
:class:`~fashionops.serving.schemas.FieldError` when used. What FastAPI itself refuses while it
validates a body is the upload field: a missing ``file`` or a ``file`` that is not a file;
:func:`request_validation_error` answers those with the API's sentence. Any other validation
error (a path parameter, ``?force=``) keeps FastAPI's answer.
"""

from __future__ import annotations

import re
from typing import Any, overload

from fastapi import Request
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from fashionops.serving.schemas import ErrorBody

NO_IMAGE = "no image: send a multipart form with the image in field 'file'"
NOT_A_FILE = "field 'file' must be a file upload"

ERROR_MEANINGS = {
    400: "not an image, a broken image or body, or a form field of the wrong kind",
    401: "missing or wrong bearer token",
    403: "reloading over HTTP needs an API token configured (serve.token_env)",
    404: "no such catalogue item",
    408: "the request body did not arrive within serve.body_timeout_s",
    409: "the reload failed; the old models are still served",
    413: "the upload or the image is too large",
    415: "unsupported content type",
    422: "a missing or invalid field",
}


# An absolute filesystem path (or a file:/sqlite: URI of one) starting a word: not for clients.
_ABSOLUTE_PATH = re.compile(r"""(?:^|(?<=[\s'"(\[=]))(?:(?:sqlite|file):)?/[^\s'",;:()\[\]]*""", re.MULTILINE)


def _last_name(match: re.Match[str]) -> str:
    names = [part for part in match.group(0).split("/")[1:] if part]
    return names[-1] if names else "/"


@overload
def public_reason(reason: BaseException | str) -> str: ...
@overload
def public_reason(reason: None) -> None: ...
def public_reason(reason: BaseException | str | None) -> str | None:
    """An error as a client may see it: absolute paths reduced to their last name."""
    if reason is None:
        return None
    text = reason if isinstance(reason, str) else f"{type(reason).__name__}: {reason}"
    return _ABSOLUTE_PATH.sub(_last_name, text)


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` documenting ``codes`` with the error body."""
    return {code: {"model": ErrorBody, "description": ERROR_MEANINGS[code]} for code in codes}


async def request_validation_error(request: Request, exc: Exception) -> Response:
    """``{"detail": sentence}`` for a missing or wrong ``file`` field; FastAPI's answer otherwise."""
    assert isinstance(exc, RequestValidationError)
    for error in exc.errors():
        if tuple(error.get("loc") or ())[:2] == ("body", "file"):
            missing = error.get("type") == "missing"
            return JSONResponse({"detail": NO_IMAGE if missing else NOT_A_FILE}, 422 if missing else 400)
    return await request_validation_exception_handler(request, exc)
