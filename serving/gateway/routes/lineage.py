"""Provenance and deletion (``lifecycle/lineage.py``, ``lifecycle/forget.py``):

- ``GET /v1/responses/{id}/lineage``: the answer's model version and digest, MLflow run, Airflow run,
  dataset versions and the training records most similar to its question, in one call. Where keys
  are set, a key sees the lineage of its own answers only (another's is a 404, as for feedback).
- ``DELETE /v1/records/{content_hash}?reason=…`` (admin key): delete a training record everywhere and
  taint every dataset and model version that holds or learned it; the answer says what was tainted.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from mlflow.exceptions import MlflowException
from pymongo.errors import PyMongoError

from lifecycle import events, forget, lineage
from serving.gateway.errors import APIError, unavailable
from serving.gateway.routes.deps import ERRORS, KeyId
from serving.gateway.security import authorize, authorize_admin

router = APIRouter(prefix="/v1", responses=ERRORS)


async def _in_thread(fn: Any) -> Any:
    try:
        return await asyncio.to_thread(fn)
    except PyMongoError as exc:
        raise unavailable(f"the database is unavailable ({type(exc).__name__})") from None
    except (MlflowException, OSError) as exc:  # OSError: the tracking server cannot be reached
        raise unavailable(f"the MLflow registry is unavailable: {str(exc).splitlines()[0][:300]}") from None
    except events.PublishError as exc:
        raise unavailable(f"{exc}; the deletion is recorded, repeat the request to finish it") from None


@router.get("/responses/{response_id}/lineage", dependencies=[Depends(authorize)])
async def response_lineage(request: Request, response_id: str, key_id: KeyId, k: int = 5) -> dict[str, Any]:
    settings, store = request.app.state.settings, request.app.state.jobs.store
    try:
        return dict(await _in_thread(lambda: lineage.resolve(settings, store(), response_id, key_id=key_id,
                                                             k=max(1, min(k, 50)))))  # fmt: skip
    except lineage.LineageError as exc:
        raise APIError(404, str(exc), param="response_id", code="response_not_found") from None


@router.delete("/records/{content_hash}", dependencies=[Depends(authorize_admin)], responses={403: ERRORS[401]})
async def delete_record(
    request: Request, content_hash: str, key_id: KeyId,
    reason: str = Query(..., min_length=1, max_length=2000, description="Why (kept for the audit)."),
) -> dict[str, Any]:  # fmt: skip
    settings, store = request.app.state.settings, request.app.state.jobs.store
    try:
        out = await _in_thread(lambda: forget.forget(settings, store(), content_hash, reason=reason,
                                                     actor=f"api-key:{key_id}" if key_id else "api"))  # fmt: skip
    except forget.ForgetError as exc:
        if str(exc).startswith("reason:"):
            raise APIError(400, str(exc), param="reason", code="invalid_reason") from None
        bad = "expected 64 hex" in str(exc)
        raise APIError(400 if bad else 404, str(exc), param="content_hash",
                       code="invalid_content_hash" if bad else "record_not_found") from None  # fmt: skip
    return {"object": "record.deleted", **out}
