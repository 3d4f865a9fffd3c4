"""``GET /health`` (the served pair, public) and ``POST /reload`` (load the source's pair now)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from fastapi.concurrency import run_in_threadpool

from fashionops.serving.deps import State
from fashionops.serving.errors import error_responses, public_reason
from fashionops.serving.schemas import Health, ReloadResult

router = APIRouter()

RELOAD_NEEDS_TOKEN = (
    "POST /reload is disabled: no API token is configured (set the environment variable {env}, "
    "serve.token_env, and send it as a bearer token; or let serve.reload_poll_s poll)"
)


@router.get("/health", summary="Model versions, aliases and status", response_model_exclude_unset=True)
async def health(state: State) -> Health:
    return Health.model_validate(
        {
            "status": "ok",
            **state.holder.current.describe(),
            "reloads": state.holder.reloads,
            "last_reload_error": public_reason(state.holder.last_error),
            "auth": bool(state.token),
            "reload_poll_s": state.settings.reload_poll_s,
        }
    )


@router.post(
    "/reload",
    summary="Load the current models of the source and swap them in",
    response_model_exclude_unset=True,
    responses=error_responses(401, 403, 409),
)
async def reload(state: State, force: bool = True) -> ReloadResult:
    """``force=false``: only when the source holds another pair than the one served.

    Only with a bearer token configured (``serve.token_env``): without one anybody who can reach
    the port could make the server load pairs over and over. The server's own poll
    (``serve.reload_poll_s``) reloads in-process and needs no token.
    """
    if not state.token:
        raise HTTPException(403, RELOAD_NEEDS_TOKEN.format(env=state.settings.token_env))
    holder = state.holder
    try:
        result = await run_in_threadpool(holder.reload, force)
    except Exception as exc:  # noqa: BLE001 - any load failure keeps the old pair
        served = holder.current.fingerprint
        raise HTTPException(409, f"reload failed, still serving {served}: {public_reason(str(exc))}") from None
    return ReloadResult.model_validate({**result, **holder.current.describe()})
