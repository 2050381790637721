"""Rollouts for admins: ``GET /v1/rollouts`` (the model's active and recent ones, with their evidence)
and ``POST /v1/rollouts/{model}/{action}`` with ``pause``, ``resume``, ``abort`` or ``promote`` — the
same as ``lifecycle rollout``. Needs a key of ``LIFECYCLE_ADMIN_KEYS`` where keys are set."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from pymongo.errors import PyMongoError

from lifecycle import rollout
from lifecycle.rollout import view
from lifecycle.store import ROLLOUTS
from serving.gateway.errors import APIError, unavailable
from serving.gateway.routes.deps import ERRORS
from serving.gateway.security import authorize_admin

router = APIRouter(prefix="/v1/rollouts", dependencies=[Depends(authorize_admin)],
                   responses={**ERRORS, 403: ERRORS[401], 409: ERRORS[400]})  # fmt: skip


async def _in_thread(request: Request, fn: Any) -> Any:
    try:
        return await asyncio.to_thread(fn, request.app.state.jobs.store())
    except rollout.RolloutError as exc:
        raise APIError(409, str(exc), code="rollout_conflict") from None
    except PyMongoError as exc:
        raise unavailable(f"rollouts unavailable: the database is unavailable ({type(exc).__name__})") from None


@router.get("")
async def list_rollouts(request: Request, model: str | None = None, limit: int = 10) -> dict[str, Any]:
    query = {"model_name": model} if model else {}
    n = max(1, min(limit, 100))
    docs = await _in_thread(
        request,
        lambda store: rollout.with_looks(
            store, list(store.db[ROLLOUTS].find(query, sort=[("started_at", -1)], limit=n))
        ),
    )
    return {"object": "list", "data": [view(d) for d in docs]}


@router.post("/{model}/{action}")
async def steer(request: Request, model: str, action: Literal["pause", "resume", "abort", "promote"]) -> dict[str, Any]:
    settings = request.app.state.settings
    doc = await _in_thread(request, lambda store: rollout.control(settings, store, model, action))
    return view(doc)
