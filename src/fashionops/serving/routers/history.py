"""The promotion history on the web: ``GET /history`` (an HTML page, linked from the web page's
header) and ``GET /api/history`` (the same events as JSON), read from the registry's alias history
(:mod:`fashionops.registry.history`) of the configured pair, oldest first.

The page is rendered here (no script, only this server's stylesheet), so it works offline. A
tracking server that does not answer gives 503 with the reason; an unknown ``model`` gives 400.
"""

from __future__ import annotations

import html
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse

from fashionops.config import RegisterConfig, TrackingConfig
from fashionops.errors import FashionOpsError, TrackingUnreachable
from fashionops.registry.history import describe_comparison, load_history
from fashionops.serving.errors import public_reason

ModelQuery = Annotated[str | None, Query(description="only this registered model (default: both of the pair)")]
LimitQuery = Annotated[int | None, Query(ge=1, le=10000, description="only the latest N events (default: all)")]


def _events(
    register: RegisterConfig, tracking: TrackingConfig, model: str | None, limit: int | None
) -> list[dict[str, Any]]:
    try:
        return load_history(register, tracking, model, limit)
    except TrackingUnreachable as exc:
        raise HTTPException(503, public_reason(str(exc))) from None
    except FashionOpsError as exc:
        raise HTTPException(400, public_reason(str(exc))) from None


def _version(value: str | None) -> str:
    return "-" if value is None else f"v{value}"


def render_page(register: RegisterConfig, events: list[dict[str, Any]], error: str | None = None) -> str:
    """The history page: one table row per alias move, the event's reason and metrics beside it."""
    e = html.escape
    rows = []
    for event in events:
        moves = event["moves"]
        for i, move in enumerate(moves):
            cells = [
                f"<td>{e(move['model'])}</td><td>@{e(move['alias'])}</td>",
                f"<td>{e(_version(move['from']))} &rarr; {e(_version(move['to']))}</td>",
            ]
            if i == 0:
                span = f' rowspan="{len(moves)}"'
                action = event["action"] + (f" ({event['decision']})" if event.get("decision") else "")
                head = (
                    f"<td{span}>{e(event['time'].replace('T', ' '))}</td><td{span}>{e(action)}</td>"
                    f"<td{span}>{e(event['actor'])}</td>"
                )
                tail = (
                    f"<td{span}>{e(event.get('reason') or '')}</td>"
                    f"<td{span}>{e(describe_comparison(event.get('comparison')))}</td>"
                )
                rows.append(f'<tr class="event">{head}{"".join(cells)}{tail}</tr>')
            else:
                rows.append(f"<tr>{''.join(cells)}</tr>")
    if error:
        body = f'<p class="error">{e(error)}</p>'
    elif not rows:
        body = "<p>No alias moves recorded yet.</p>"
    else:
        body = (
            "<table><thead><tr><th>time (UTC)</th><th>action</th><th>actor</th><th>model</th><th>alias</th>"
            "<th>from &rarr; to</th><th>reason</th><th>metric comparison</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>"
        )
    pair = f"{e(register.classifier_name)} + {e(register.index_name)}"
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n  <meta charset="utf-8">\n'
        '  <meta name="viewport" content="width=device-width, initial-scale=1">\n'
        "  <title>fashionops · promotion history</title>\n"
        '  <link rel="stylesheet" href="/static/style.css">\n</head>\n<body>\n'
        "  <header>\n    <h1>fashionops <span>promotion history</span></h1>\n"
        f'    <p class="muted">{pair} · oldest first · <a href="/">visual search</a> · '
        '<a href="/api/history">JSON</a></p>\n  </header>\n'
        f'  <section id="history">\n{body}\n  </section>\n</body>\n</html>\n'
    )


def history_router(register: RegisterConfig, tracking: TrackingConfig) -> APIRouter:
    """The history routes over the registry pair of ``register`` in the store of ``tracking``."""
    router = APIRouter()

    @router.get(
        "/api/history",
        summary="Every alias move of the registered pair, oldest first",
    )
    async def history_json(model: ModelQuery = None, limit: LimitQuery = None) -> dict[str, Any]:
        """Events: ``time``, ``action``, ``decision``, ``actor``, ``reason``, ``moves`` (model, alias,
        from, to), ``comparison`` (selection metric of the candidate and the champion), ``run_id``."""
        events = await run_in_threadpool(_events, register, tracking, model, limit)
        return {"models": {"classifier": register.classifier_name, "index": register.index_name}, "events": events}

    @router.get("/history", include_in_schema=False)
    async def history_page(model: ModelQuery = None, limit: LimitQuery = None) -> HTMLResponse:
        try:
            events = await run_in_threadpool(_events, register, tracking, model, limit)
        except HTTPException as exc:
            return HTMLResponse(render_page(register, [], str(exc.detail)), status_code=exc.status_code)
        return HTMLResponse(render_page(register, events))

    return router
