"""``GET /health`` (the served pair, public) and ``POST /reload`` (load the source's pair now)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from fastapi.concurrency import run_in_threadpool

from fashionops.serving.deps import Holder, State
from fashionops.serving.errors import error_responses
from fashionops.serving.schemas import Health, ReloadResult

router = APIRouter()


@router.get("/health", summary="Model versions, aliases and status", response_model_exclude_unset=True)
async def health(state: State) -> Health:
    return Health.model_validate(
        {
            "status": "ok",
            **state.holder.current.describe(),
            "reloads": state.holder.reloads,
            "last_reload_error": state.holder.last_error,
            "auth": bool(state.token),
            "reload_poll_s": state.settings.reload_poll_s,
        }
    )


@router.post(
    "/reload",
    summary="Load the current models of the source and swap them in",
    response_model_exclude_unset=True,
    responses=error_responses(401, 409),
)
async def reload(holder: Holder, force: bool = True) -> ReloadResult:
    """``force=false``: only when the source holds another pair than the one served."""
    try:
        result = await run_in_threadpool(holder.reload, force)
    except Exception as exc:  # noqa: BLE001 - any load failure keeps the old pair
        raise HTTPException(409, f"reload failed, still serving {holder.current.fingerprint}: {exc}") from None
    return ReloadResult.model_validate({**result, **holder.current.describe()})
