"""Visual-search web app and API over a classifier/index pair (the champion models).

``fashionops serve`` runs :func:`run_serve`: a FastAPI app with

- ``POST /classify``: multipart upload (field ``file``) -> label, top-k probabilities, model version;
- ``POST /search``: upload (field ``file``) or ``item_id`` (form or JSON) -> top-k similar items;
- ``GET /items/{id}``, ``GET /items/{id}/image``: catalogue metadata and image;
- ``GET /health``: model versions, aliases and where they came from (never a filesystem path);
- ``GET /history`` (page), ``GET /api/history`` (JSON): the registry's alias moves (promotion history);
- ``POST /reload`` (only with an API token configured; the poll reloads in-process);
- ``/``: a small web page (``serving/static``); ``/docs``, ``/redoc``: the generated OpenAPI docs,
  their scripts and styles served from ``/static/docs`` (``docs``: they work offline).

The package, one job per module: ``schemas`` (request/response models), ``bundle`` (the served
pair and its holder), ``loader`` (loading a pair from the registry, a pull dir or local dirs),
``deps`` (FastAPI dependencies), ``docs`` (the API docs pages), ``routing`` (how upload bodies
are read), ``errors`` (error bodies), ``middleware`` (token, upload size and time limits,
security headers), ``torchscript`` (traces a reload can free), ``downloads`` (registry download
folders), ``recording`` (what the models saw, ``monitor.record_requests``), ``routers/`` (the
endpoints); this module assembles them and configures uvicorn.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.staticfiles import StaticFiles

from fashionops.config import Params
from fashionops.serving.bundle import BundleHolder, ModelBundle
from fashionops.serving.deps import ServingState
from fashionops.serving.docs import add_offline_docs
from fashionops.serving.downloads import remove_owned, sweep_stale
from fashionops.serving.errors import request_validation_error
from fashionops.serving.loader import ServeError, current_fingerprint, load_bundle, resolve_source
from fashionops.serving.middleware import Guard, SecurityHeaders
from fashionops.serving.recording import start_recorder
from fashionops.serving.routers import ROUTERS
from fashionops.serving.routers.history import history_router
from fashionops.serving.routers.pages import STATIC_DIR
from fashionops.serving.routing import document_json_variants

log = logging.getLogger(__name__)


def create_app(
    params: Params,
    bundle: ModelBundle | None = None,
    loader: Callable[[], ModelBundle] | None = None,
    fingerprint: Callable[[], str | None] | None = None,
) -> FastAPI:
    """The FastAPI app. ``bundle``/``loader`` default to ``load_bundle(params)`` (tests pass their own
    bundle); ``fingerprint`` tells the reload poll what the source holds now.

    A bearer token is required on the API when the env var named by ``serve.token_env`` is set.
    On shutdown the served bundle's download folder is deleted.
    """
    cfg = params.serve
    if bundle is None or loader is None:
        source = resolve_source(params)
        loader = loader or (lambda: load_bundle(params, source))
        fingerprint = fingerprint or (lambda: current_fingerprint(params, source))
        bundle = bundle or loader()
    holder = BundleHolder(bundle, loader, fingerprint)
    token = os.environ.get(cfg.token_env) if cfg.token_env else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stop = threading.Event()
        if cfg.reload_poll_s > 0:
            threading.Thread(
                target=holder.poll_forever, args=(cfg.reload_poll_s, stop), name="fashionops-reload-poll", daemon=True
            ).start()
        try:
            yield
        finally:
            stop.set()
            holder.close()  # SIGTERM/SIGINT end here too: uvicorn runs the shutdown first
            if app.state.recorder is not None:
                app.state.recorder.close()  # queued observations written first

    app = FastAPI(
        title="fashionops visual search",
        version="1",
        description="Classify a fashion product photo and find similar catalogue items.",
        lifespan=lifespan,
        docs_url=None,  # add_offline_docs: the same pages without a CDN
        redoc_url=None,
    )
    app.state.serving = ServingState(holder=holder, settings=cfg, token=token)
    app.state.recorder = start_recorder(params.monitor)  # monitor.record_requests (opt-in)
    for router in ROUTERS:
        app.include_router(router)
    app.include_router(history_router(params.register, params.tracking))  # /history, /api/history
    add_offline_docs(app)  # its /static/docs mount goes before /static's
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_exception_handler(RequestValidationError, request_validation_error)
    document_json_variants(app, ROUTERS)
    app.add_middleware(
        Guard, max_bytes=int(cfg.max_upload_mb * 1024 * 1024), token=token, body_timeout_s=cfg.body_timeout_s
    )
    # Outside Starlette's whole stack (its 500 handler included): headers on every response.
    build_stack = app.build_middleware_stack
    app.build_middleware_stack = lambda: SecurityHeaders(build_stack())  # type: ignore[method-assign]
    return app


def uvicorn_config(app: FastAPI, host: str, port: int, log_level: str = "info") -> Any:
    """uvicorn settings for ``app``: idle keep-alive connections close after 5 s; a shutdown
    waits for running requests at most ``serve.body_timeout_s`` (then closes them)."""
    import uvicorn

    settings = app.state.serving.settings
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        lifespan="on",
        timeout_keep_alive=5,
        timeout_graceful_shutdown=max(1, int(settings.body_timeout_s)),
    )


def set_torch_threads(n: int) -> None:
    """Intra-op (and, if still possible, inter-op) threads for this serving process.

    One thread per forward pass and several passes in parallel serves small images best: a
    multi-threaded pass on a busy machine spends its time waiting for its own threads.
    """
    import torch

    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(n)
    except RuntimeError:  # already fixed once parallel work has run in this process
        pass


@contextmanager
def serve_in_thread(app: FastAPI, host: str = "127.0.0.1", port: int = 0, timeout_s: float = 30.0) -> Iterator[str]:
    """Run ``app`` with uvicorn in a background thread (tests, tools); yields its base URL.

    ``port=0`` picks a free port. The server is stopped when the block exits.
    """
    import uvicorn

    server = uvicorn.Server(uvicorn_config(app, host, port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="fashionops-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise ServeError(f"uvicorn did not start on {host}:{port} within {timeout_s:g} s")
        time.sleep(0.05)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=timeout_s)


def run_serve(params: Params, host: str | None = None, port: int | None = None) -> None:
    """Load the models and serve the app with uvicorn until interrupted (``fashionops serve``).

    Download folders of servers killed before they could clean up are deleted first; this
    server's own are deleted when it stops (the lifespan on SIGTERM/SIGINT, here otherwise).
    """
    import uvicorn

    sweep_stale()
    try:
        if params.serve.torch_threads:
            set_torch_threads(params.serve.torch_threads)
        app = create_app(params)
        served = app.state.serving.holder.current
        host, port = host or params.serve.host, port or params.serve.port
        log.info("serving %s (%s) on http://%s:%s", served.fingerprint, served.source, host, port)
        uvicorn.Server(uvicorn_config(app, host, port)).run()
    finally:
        remove_owned()
