"""The server's guard: the optional bearer token, then the upload size limit, as pure ASGI
middleware (no task groups, so an error raised by ``receive`` reaches us unwrapped).

- Token: when the env var named by ``serve.token_env`` is set, every path but the public ones
  (``PUBLIC_PATHS``, ``/static/``) needs ``Authorization: Bearer <token>`` or the
  ``fashionops_token`` cookie (what the page sets for ``<img>`` loads); else 401.
- Size: a request body over ``serve.max_upload_mb`` (+ multipart framing) gets 413: at once for a
  too-large ``Content-Length``, or while a streamed body is being read; it is never buffered whole.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Multipart framing (boundaries, part headers, small fields) on top of the file itself.
MULTIPART_OVERHEAD = 64 * 1024
PUBLIC_PATHS = ("/", "/health", "/docs", "/redoc", "/openapi.json", "/favicon.ico")
TOKEN_COOKIE = "fashionops_token"


class UploadTooLarge(HTTPException):
    """A streamed request body passed ``serve.max_upload_mb`` (413 wherever it is raised)."""

    def __init__(self, detail: str) -> None:
        super().__init__(413, detail)


def authorized(scope: Scope, token: str) -> bool:
    """Bearer token in ``Authorization``, or the ``fashionops_token`` cookie (for <img> loads)."""
    conn = HTTPConnection(scope)
    header = conn.headers.get("authorization", "")
    given = header[7:].strip() if header.lower().startswith("bearer ") else conn.cookies.get(TOKEN_COOKIE, "")
    return bool(given) and hmac.compare_digest(given.encode(), token.encode())


class Guard:
    """ASGI middleware: the bearer token (when set), then the streamed upload limit."""

    def __init__(self, app: ASGIApp, max_bytes: int, token: str | None) -> None:
        self._app = app
        self._token = token
        self._limit = max_bytes + MULTIPART_OVERHEAD
        self._mb = max_bytes / 1024 / 1024

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        path = scope.get("path", "")
        if (
            self._token
            and not (path in PUBLIC_PATHS or path.startswith("/static/"))
            and not authorized(scope, self._token)
        ):
            resp = JSONResponse(
                {"detail": "missing or wrong bearer token"}, 401, headers={"WWW-Authenticate": "Bearer"}
            )
            await resp(scope, receive, send)
            return
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            await self._app(scope, receive, send)
            return
        await self._limited(scope, receive, send)

    async def _limited(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app on a body that may not pass the limit: 413 before or while it is read."""
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self._limit:
            detail = f"upload too large: {int(declared)} bytes (limit {self._mb:g} MB)"
            await JSONResponse({"detail": detail}, 413)(scope, receive, send)
            return
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self._limit:
                    raise UploadTooLarge(f"upload too large: more than {self._mb:g} MB")
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self._app(scope, counting_receive, tracking_send)
        except UploadTooLarge as exc:  # raised outside the app's exception handling
            if started:
                raise
            await JSONResponse({"detail": exc.detail}, 413)(scope, receive, send)
