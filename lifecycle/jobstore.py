"""Queued inference jobs in Mongo ``jobs``: one document per job and one per finished item.

Item results are keyed ``<job id>/<item id>`` and written with a unique insert, so an item redelivered
after a worker died is answered once. Used by the gateway (create, read) and the workers (results);
imports neither torch nor grpc.
"""

from __future__ import annotations

import uuid
from typing import Any

from lifecycle import topics
from lifecycle.settings import Settings
from lifecycle.store import JOBS, Store, now


def create(
    settings: Settings, store: Store, items: list[dict[str, Any]], model: str, owner: str = ""
) -> dict[str, Any]:
    """Record the job, then queue it on ``lifecycle.inference-requests`` (key = job id) as an
    ``InferenceJobQueued`` event. Items: ``id``, ``prompt`` or ``messages`` (role, text content),
    ``max_tokens``, ``temperature``. When Kafka does not take the event the job is marked ``failed``
    with the reason (no worker will ever see it) and ``PublishError`` is raised. ``owner``: the key id
    of the API key that created it (only that key, or an admin key, reads it back)."""
    from lifecycle.events import PublishError, new_event, publish
    from lifecycle.v1.events_pb2 import InferenceJobQueued

    job_id = f"job-{uuid.uuid4().hex[:16]}"
    for i, item in enumerate(items):
        item.setdefault("id", str(i))
    event = new_event(InferenceJobQueued, job_id=job_id, model=model, items=items)  # checks the items' fields
    doc = {"_id": job_id, "kind": "job", "status": "queued", "model": model, "total": len(items), "owner": owner,
           "created_at": now()}  # fmt: skip
    store.insert_once(JOBS, doc)
    try:
        publish(settings, topics.INFERENCE_REQUESTS, job_id, event)
    except PublishError as exc:
        store.update(JOBS, job_id, {"status": "failed", "error": f"not queued: {exc}", "finished_at": now()})
        raise
    return view(store, job_id) or {}


def completed_event(job: dict[str, Any]) -> Any:
    """The ``InferenceJobCompleted`` event of a finished job's view (``view``)."""
    from lifecycle.events import new_event
    from lifecycle.v1.events_pb2 import InferenceJobCompleted

    fields = ("model", "status", "total", "completed", "results")
    return new_event(InferenceJobCompleted, job_id=job["id"], **{k: job[k] for k in fields})


def result_id(job_id: str, item_id: str) -> str:
    return f"{job_id}/{item_id}"


def view(store: Store, job_id: str) -> dict[str, Any] | None:
    job = store.get(JOBS, job_id)
    if job is None or job.get("kind") != "job":
        return None
    results = list(store.db[JOBS].find({"kind": "result", "job_id": job_id}))
    results.sort(key=lambda r: (len(str(r["item_id"])), str(r["item_id"])))
    done = len(results)
    status = "succeeded" if done >= job["total"] else ("running" if done else job["status"])
    if done >= job["total"] and any(r.get("error") for r in results):
        status = "completed_with_errors"
    return {
        "id": job_id,
        "object": "job",
        "owner": job.get("owner", ""),
        "status": status,
        "model": job.get("model", ""),
        "total": job["total"],
        "completed": done,
        "error": job.get("error"),
        "created_at": job["created_at"].isoformat() if hasattr(job["created_at"], "isoformat") else job["created_at"],
        "results": [
            {k: r.get(k) for k in ("item_id", "text", "finish_reason", "error", "version", "worker", "usage")}
            for r in results
        ],
    }
