"""The server's guard: the optional bearer token, then the upload size and time limits, as pure
ASGI middleware (no task groups, so an error raised by ``receive`` reaches us unwrapped), and the
security headers every response carries.

- Token: when the env var named by ``serve.token_env`` is set, every path but the public ones
  (``PUBLIC_PATHS``, ``/static/``) needs ``Authorization: Bearer <token>`` or the
  ``fashionops_token`` cookie (what the page sets for ``<img>`` loads); else 401.
- Size: a request body over ``serve.max_upload_mb`` (+ multipart framing) gets 413: at once for a
  too-large ``Content-Length``, or while a streamed body is being read; it is never buffered whole.
- Time: a request body must arrive whole within ``serve.body_timeout_s`` of the request's headers;
  a client that stalls (or trickles) gets 408 and its connection is closed, so slow clients cannot
  hold connections and partial bodies for ever.
- Headers (:class:`SecurityHeaders`): ``nosniff``, no referrer, no framing; the web page and the
  API docs pages get a Content-Security-Policy that allows only this server's scripts, styles,
  images and API calls.
"""

from __future__ import annotations

import asyncio
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
PUBLIC_PATHS = ("/", "/health", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json", "/favicon.ico")
TOKEN_COOKIE = "fashionops_token"


class BodyRefused(HTTPException):
    """The request body broke a limit while it was read (its status wherever it is raised)."""


class UploadTooLarge(BodyRefused):
    """A streamed request body passed ``serve.max_upload_mb`` (413)."""

    def __init__(self, detail: str) -> None:
        super().__init__(413, detail)


class BodyTimeout(BodyRefused):
    """The request body did not arrive within ``serve.body_timeout_s`` (408; the connection closes)."""

    def __init__(self, timeout_s: float) -> None:
        detail = f"request body not received within serve.body_timeout_s = {timeout_s:g} s"
        super().__init__(408, detail, headers={"Connection": "close"})


def authorized(scope: Scope, token: str) -> bool:
    """Bearer token in ``Authorization``, or the ``fashionops_token`` cookie (for <img> loads)."""
    conn = HTTPConnection(scope)
    header = conn.headers.get("authorization", "")
    given = header[7:].strip() if header.lower().startswith("bearer ") else conn.cookies.get(TOKEN_COOKIE, "")
    return bool(given) and hmac.compare_digest(given.encode(), token.encode())


class Guard:
    """ASGI middleware: the bearer token (when set), then the streamed upload limits."""

    def __init__(self, app: ASGIApp, max_bytes: int, token: str | None, body_timeout_s: float) -> None:
        self._app = app
        self._token = token
        self._limit = max_bytes + MULTIPART_OVERHEAD
        self._mb = max_bytes / 1024 / 1024
        self._timeout_s = body_timeout_s

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
        """Run the app on a body that may not pass the limits: 413 before or while it is read, 408
        when it is not whole by the deadline."""
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self._limit:
            detail = f"upload too large: {int(declared)} bytes (limit {self._mb:g} MB)"
            await JSONResponse({"detail": detail}, 413)(scope, receive, send)
            return
        seen = 0
        started = False
        body_done = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout_s

        async def counting_receive() -> Message:
            nonlocal seen, body_done
            if body_done:  # after the body: waits for a disconnect, which has no deadline
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise BodyTimeout(self._timeout_s) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self._limit:
                    raise UploadTooLarge(f"upload too large: more than {self._mb:g} MB")
                body_done = not message.get("more_body", False)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self._app(scope, counting_receive, tracking_send)
        except BodyRefused as exc:  # raised outside the app's exception handling
            if started:
                raise
            await JSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)(scope, receive, send)


# The page loads only its own script and style; images are catalogue photos (same origin) and the
# preview of a chosen file (blob:); it calls only its own API and may not be framed.
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
# /docs and /redoc load their scripts and styles from this server (serving/docs.py), nothing from
# elsewhere. FastAPI's pages start Swagger UI / ReDoc with an inline script and both style inline;
# ReDoc renders in a blob: worker, Swagger UI shows a tried image answer as a blob: URL. ReDoc's
# bundle would fetch the Redocly logo of its sidebar footer from a CDN: refused, the footer is text.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
DOCS_PATHS = ("/docs", "/docs/oauth2-redirect", "/redoc")
# API answers are data: they may load nothing and be framed nowhere.
API_CSP = "default-src 'none'; frame-ancestors 'none'"
COMMON_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
)


def content_security_policy(path: str) -> str:
    """The Content-Security-Policy of a response to ``path``."""
    if path in ("/", "/history"):  # the web page and its promotion-history page
        return PAGE_CSP
    return DOCS_CSP if path in DOCS_PATHS else API_CSP


class SecurityHeaders:
    """ASGI middleware: the security headers on every HTTP response (errors included)."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        csp = content_security_policy(scope.get("path", "")).encode()

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(n, v) for n, v in (*COMMON_HEADERS, (b"content-security-policy", csp)) if n not in present]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self._app(scope, receive, send_with_headers)
