"""The flywheel's data step: feedback users gave (Mongo ``feedback``) on answers the gateway logged
(``inference_log``) curated into training records (``training/curate.py``) and sent on as the same
``TrainingDataArrived`` event a user would publish, so ingest -> train -> gate -> rollout follows.

``curate_feedback`` takes the feedback not curated yet, newest first, joined with what was asked
and answered; below ``min_items`` it does nothing (the items wait for the next run). Each item is
marked in Mongo with what became of it (``curation``: ``kept`` with the event id, or ``refused`` with
the reason), so nothing is curated twice and every refusal can be read back. The records extend the
champion's dataset version, or the newest curated version built on it (``head_dataset``): a new
version whose lineage names its parent. Records go inline in
one event of at most ``MAX_EVENT_BYTES``; what does not fit waits for the next run. The event id is
derived from the feedback ids it carries, so a retry after a crash publishes the same event (the
intake trains once per event id). Evaluation texts are every eval split under the datasets dir.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

from lifecycle import events, topics
from lifecycle.settings import Settings
from lifecycle.store import FEEDBACK, INFERENCE_LOG, Store, now
from lifecycle.v1 import events_pb2
from training.curate import curate
from training.records import RecordError, parse_record

MAX_EVENT_BYTES = 700_000  # under Kafka's default 1 MB message limit, with room for the envelope
PENDING_LIMIT = 5_000  # feedback items looked at per run
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts: the text ones
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _messages(logged: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [{"role": _ROLES[m["role"]], "content": _text(m.get("content"))} for m in logged
            if m.get("role") in _ROLES and _text(m.get("content")).strip()]  # fmt: skip


def pending(store: Store, limit: int = PENDING_LIMIT) -> list[dict[str, Any]]:
    """Feedback not curated yet, newest first, each with the question and answer it rates."""
    found = list(store.db[FEEDBACK].find({"curation": {"$exists": False}}).sort("created_at", -1).limit(limit))
    answers = {d["_id"]: d for d in store.db[INFERENCE_LOG].find(
        {"_id": {"$in": [f["_id"] for f in found]}}, {"messages": 1, "prompt": 1, "output": 1})}  # fmt: skip
    items = []
    for fb in found:
        answer = answers.get(fb["_id"], {})
        items.append({"feedback_id": fb["_id"], "response_id": fb["_id"], "rating": fb.get("rating", 0),
                      "correction": fb.get("correction") or "", "model": fb.get("model", ""),
                      "version": fb.get("version", ""), "messages": _messages(answer.get("messages") or []),
                      "prompt": answer.get("prompt") or "", "output": answer.get("output") or ""})  # fmt: skip
    return items


def eval_texts(settings: Settings) -> Iterator[str]:
    """The prompt and reference of every record of every eval split under the datasets dir."""
    for path in sorted(settings.datasets_dir.glob("*/eval.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = parse_record(line)
            except RecordError:
                continue
            yield "\n".join(m["content"] for m in rec.prompt_messages)
            yield rec.reference


def champion_dataset(settings: Settings) -> str:
    """The dataset version the champion was trained on ("" without a champion): curated records extend
    it, so each cycle's model learns the new corrections on top of what the champion knew, and is
    scored on the same eval split."""
    from lifecycle import registry

    mc = registry.client(settings.mlflow_tracking_uri)
    champion = registry.version_by_alias(mc, settings.model_name, registry.CHAMPION)
    if champion is None or not champion.run_id:
        return ""
    base = str(mc.get_run(champion.run_id).data.tags.get("dataset_id", ""))
    return base if (settings.datasets_dir / base / "train.jsonl").exists() else ""


def head_dataset(settings: Settings, store: Store, name: str) -> str:
    """What the next curated records extend: the newest version of the curated dataset ``name`` that
    descends from the champion's dataset (its records were curated but the version trained on them was
    kept out by the gate: they are still good corrections, so the next cycle builds on them), else the
    champion's own dataset ("" without a champion)."""
    from lifecycle.lineage import dataset_chain
    from lifecycle.store import DATASETS

    champion = champion_dataset(settings)
    if not champion:
        return ""
    found = store.db[DATASETS].find({"name": name}, {"_id": 1, "parents": 1}).sort("created_at", -1).limit(20)
    for doc in found:
        if not doc.get("parents") or not (settings.datasets_dir / doc["_id"] / "train.jsonl").exists():
            continue
        if champion in {d["dataset_id"] for d in dataset_chain(store, doc["_id"], limit=64)}:
            return str(doc["_id"])
    return champion


def curate_feedback(
    settings: Settings, store: Store, *, min_items: int = 1, dataset: str = "feedback",
    params: dict[str, Any] | None = None, run_id: str = "",
) -> dict[str, Any]:  # fmt: skip
    """Curate the pending feedback and publish its records; returns what was done (see the module)."""
    items = pending(store)
    if len(items) < min_items:
        return {"state": "waiting", "pending": len(items), "min_items": min_items}
    out = curate(items, eval_texts(settings))
    records, size = [], 0
    for r in out.records:
        size += len(json.dumps(r))
        if size > MAX_EVENT_BYTES:
            break
        records.append(r)
    carried = [r["feedback_id"] for r in records]
    left = {r["feedback_id"] for r in out.records[len(records) :]}
    at = now()
    by_reason: dict[str, list[str]] = {}
    for refused in out.refused:
        by_reason.setdefault(refused["reason"], []).append(refused["feedback_id"])
    for reason, ids in by_reason.items():  # one write per reason, not per item
        store.db[FEEDBACK].update_many({"_id": {"$in": ids}}, {"$set": {"curation": {
            "outcome": "refused", "reason": reason, "at": at, "run": run_id}}})  # fmt: skip
    event_id = ""
    if records:
        event_id = "curated-" + hashlib.sha256("\n".join(sorted(carried)).encode()).hexdigest()[:24]
        base = head_dataset(settings, store, dataset)
        msg = events.new_event(events_pb2.TrainingDataArrived, event_id=event_id, dataset=dataset,
                               records=records, params=params or {}, base_dataset=base)  # fmt: skip
        events.publish(settings, topics.TRAINING_DATA, dataset, msg)  # before marking: a crash re-sends it
        store.db[FEEDBACK].update_many({"_id": {"$in": carried}}, {"$set": {"curation": {
            "outcome": "kept", "event_id": event_id, "at": at, "run": run_id}}})  # fmt: skip
    return {"state": "published" if records else "nothing to train on", "event_id": event_id,
            "kept": len(records), "waiting": len(left), "refused": len(out.refused),
            "refusals": out.refused[:50], "pii": out.pii, "pending": len(items)}  # fmt: skip
