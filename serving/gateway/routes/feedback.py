"""``POST /v1/feedback``: a user's rating (and optional correction) of one answer, by the answer's id.
Kept in Mongo ``feedback`` with the version that answered and, under a rollout, its arm: evidence for
the rollout's decision and material for the next training set. One verdict per answer (a second one
replaces the first); an id that is unknown — or another key's, where keys are set — is a 404. Kept
in Mongo first, then announced as ``FeedbackReceived`` on ``lifecycle.feedback`` (the curation DAG's
trigger); the receipt says whether the announcement went out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pymongo.errors import PyMongoError

from lifecycle import events, tally, topics
from lifecycle.store import FEEDBACK, INFERENCE_LOG, now
from lifecycle.v1 import events_pb2
from serving.gateway.body import body_doc, json_body
from serving.gateway.errors import APIError, unavailable
from serving.gateway.inference_log import tally_inc
from serving.gateway.protocol import FeedbackReceipt, FeedbackRequest
from serving.gateway.routes.deps import ERRORS, CompletionsDep, KeyId
from serving.gateway.security import authorize

router = APIRouter(prefix="/v1", dependencies=[Depends(authorize)], responses=ERRORS)
log = logging.getLogger(__name__)
PUBLISH_S = 3.0  # the broker's ack at most this long: a user waits for the receipt
_FIELDS = ("model", "version", "digest", "rollout", "arm", "stage", "api_key_id")


@router.post("/feedback", response_model=FeedbackReceipt, openapi_extra=body_doc(FeedbackRequest))
async def feedback(
    body: Annotated[FeedbackRequest, Depends(json_body(FeedbackRequest))],
    completions: CompletionsDep,
    key_id: KeyId,
    request: Request,
) -> FeedbackReceipt:
    known = completions.recent.get(body.response_id)
    store = request.app.state.jobs.store

    def write() -> dict[str, Any] | None:
        meta = known
        if meta is None:  # answered by another gateway, or long ago: the inference log has it
            found = store().db[INFERENCE_LOG].find_one({"_id": body.response_id}, dict.fromkeys(_FIELDS, 1))
            if found is None:
                return None
            meta = {k: found[k] for k in _FIELDS if found.get(k) is not None}
        if key_id and meta.get("api_key_id", key_id) != key_id:
            return None
        doc = {"_id": body.response_id, "rating": body.rating, "correction": body.correction, "comment": body.comment,
               **{k: meta[k] for k in _FIELDS if k in meta}, "api_key_id": key_id, "created_at": now(),
               "published": False}  # fmt: skip
        before = store().db[FEEDBACK].find_one_and_replace({"_id": body.response_id}, doc, upsert=True)
        if meta.get("rollout") and meta.get("arm") in ("champion", "challenger"):  # the rollout's evidence
            inc = tally.rating_counts(body.rating)
            for k, v in (tally.rating_counts(before["rating"], -1) if before else {}).items():
                inc[k] = inc.get(k, 0) + v
            path = f"s{int(meta.get('stage') or 0)}.{meta['arm']}."
            tally_inc(store(), meta["rollout"], {path + k: v for k, v in inc.items()})
        return meta

    def announce(meta: dict[str, Any]) -> bool:
        """``FeedbackReceived`` on ``lifecycle.feedback``; the stored feedback says whether it went out
        (curation reads Mongo, so an unannounced one is late, never lost)."""
        event = events.new_event(events_pb2.FeedbackReceived, response_id=body.response_id, rating=body.rating,
                                 correction=body.correction or "", comment=body.comment or "",
                                 model=meta.get("model", ""), version=meta.get("version", ""),
                                 rollout_id=meta.get("rollout", ""), arm=meta.get("arm", ""))  # fmt: skip
        try:
            events.publish(request.app.state.settings, topics.FEEDBACK, body.response_id, event, timeout=PUBLISH_S)
        except events.PublishError as exc:
            log.warning("feedback %s kept, not announced: %s", body.response_id, exc)
            return False
        with contextlib.suppress(PyMongoError):
            store().db[FEEDBACK].update_one({"_id": body.response_id}, {"$set": {"published": True}})
        return True

    try:
        meta = await asyncio.to_thread(write)
    except PyMongoError as exc:
        raise unavailable(f"feedback not recorded: the database is unavailable ({type(exc).__name__})") from None
    if meta is None:
        raise APIError(404, f"response_id {body.response_id!r}: no such answer", param="response_id",
                       code="response_not_found")  # fmt: skip
    published = await asyncio.to_thread(announce, meta)
    return FeedbackReceipt(response_id=body.response_id, model=meta.get("model", ""),
                           version=meta.get("version", ""), rating=body.rating, published=published)  # fmt: skip
