"""Kafka -> Airflow intake for ``lifecycle.training-data``, without losing or doubling a message.

The AssetWatcher's trigger (apache-kafka ``AwaitMessageTrigger``) commits a message's offset
*before* Airflow stores the asset event, so a triggerer killed in between would lose the message.
``accept`` (the trigger's ``apply_function``) therefore lands every message in Mongo
``training_events`` first, keyed by its event id (or topic:partition:offset when it has none), and
only then lets the trigger go on:

- ``received``: landed, no run has claimed it yet. ``redeliver_stuck`` (the reconcile task)
  re-publishes such events after a grace period; ``accept`` lets a ``received`` event through again.
- ``claimed``: a DAG run took it (``claim`` inserts into ``training_event_claims`` keyed by the
  event id, atomic), so a duplicate delivery is dropped in ``accept`` and, if it races through
  anyway, in ``claim``: one event, one training.

A malformed message is not dropped here: it starts a run whose ingest fails with the reason, which
is written to the event's document, and the watcher goes on with the next message.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from lifecycle.store import TRAINING_EVENT_CLAIMS as CLAIMS
from lifecycle.store import TRAINING_EVENTS as COLLECTION


def _store() -> Any:
    from lifecycle.settings import load_settings
    from lifecycle.store import Store

    return Store.connect(load_settings())


def event_key(value: bytes | None, topic: str, partition: int, offset: int) -> str:
    try:
        data = json.loads(value or b"")
        if isinstance(data, dict) and isinstance(data.get("event_id"), str) and data["event_id"]:
            return data["event_id"]
    except (ValueError, UnicodeDecodeError):
        pass
    return f"{topic}:{partition}:{offset}"


def accept(message: Any) -> dict[str, Any] | None:
    """apply_function of the watcher: land the message, return what the DAG run receives (or None
    to skip a duplicate). Runs in the triggerer before the offset is committed."""
    value = message.value()
    key = event_key(value, message.topic(), message.partition(), message.offset())
    text = (value or b"").decode("utf-8", errors="replace")
    now = dt.datetime.now(dt.UTC)
    with _store() as store:
        doc = {"_id": key, "state": "received", "payload": text, "topic": message.topic(),
               "partition": message.partition(), "offset": message.offset(), "received_at": now}  # fmt: skip
        if not store.insert_once(COLLECTION, doc):
            existing = store.get(COLLECTION, key) or {}
            if existing.get("state") != "received":
                return None  # already claimed by a run: a duplicate delivery
    return {"event_id": key, "payload": text}


def claim(event_ids: list[str], dag_run_id: str) -> list[str]:
    """Claim events for this run; returns the ones it got. The claim is the insert of a document
    keyed by the event id: a unique-key insert is atomic on MongoDB and FerretDB alike, where a
    conditional update was seen to let two concurrent runs both "win" on FerretDB/SQLite."""
    got = []
    now = dt.datetime.now(dt.UTC)
    with _store() as store:
        for key in dict.fromkeys(event_ids):  # one asset event per delivery: the same key may repeat
            if store.insert_once(CLAIMS, {"_id": key, "dag_run_id": dag_run_id, "claimed_at": now}):
                store.db[COLLECTION].update_one(
                    {"_id": key}, {"$set": {"state": "claimed", "dag_run_id": dag_run_id, "claimed_at": now}}
                )
                got.append(key)
    return got


def payloads(event_ids: list[str]) -> list[str]:
    with _store() as store:
        return [str((store.get(COLLECTION, k) or {}).get("payload", "")) for k in event_ids]


def record(event_ids: list[str], **fields: Any) -> None:
    with _store() as store:
        store.db[COLLECTION].update_many({"_id": {"$in": event_ids}}, {"$set": fields})


def redeliver_stuck(
    grace: dt.timedelta = dt.timedelta(minutes=2), waiting_runs: int = 0, event_ids: list[str] | None = None
) -> list[str]:
    """Re-publish events that were landed but never claimed (the triggerer died between the offset
    commit and the asset event, or Airflow kept the asset event queued: apache/airflow#56050); ``accept``
    lets them through again and ``claim`` keeps it to one run. With ``waiting_runs`` (runs of the Kafka
    DAG queued or running, which may be the ones carrying these events to their claim) nothing is
    re-published: a run waiting for a slot is not a lost event, and a copy would only start a duplicate
    run. They are looked at again next time. ``event_ids``: only these."""
    from lifecycle import events, topics
    from lifecycle.settings import load_settings

    if waiting_runs:
        return []

    settings = load_settings()
    cutoff = dt.datetime.now(dt.UTC) - grace
    sent = []
    with _store() as store:
        query: dict[str, Any] = {"state": "received", "received_at": {"$lt": cutoff}}
        if event_ids is not None:
            query["_id"] = {"$in": list(event_ids)}
        stuck = list(store.db[COLLECTION].find(query))
    for doc in stuck:
        from confluent_kafka import Producer

        producer = Producer(topics.producer_config(settings))
        producer.produce(doc["topic"], key=b"redelivery", value=doc["payload"].encode())
        if producer.flush(15) != 0:
            raise events.PublishError(f"could not re-publish {doc['_id']}")
        sent.append(str(doc["_id"]))
        if doc["_id"] != event_key(doc["payload"].encode(), "", 0, 0):
            # Keyed by its old offset: the re-published copy lands under a new key.
            record([doc["_id"]], state="redelivered")
    return sent


def parse_payload(payload: str) -> dict[str, Any]:
    """The TrainingDataArrived fields a run needs; ``EventError`` names what is wrong."""
    from lifecycle import events
    from lifecycle.v1 import events_pb2

    msg = events.decode(payload)
    if not isinstance(msg, events_pb2.TrainingDataArrived):
        raise events.EventError(f"expected a TrainingDataArrived event, got {msg.DESCRIPTOR.name}")
    data = events.to_dict(msg)
    if not data.get("records") and not data.get("uri") and not data.get("base_dataset"):
        raise events.EventError("a TrainingDataArrived event needs 'records', 'uri' or 'base_dataset'")
    if data.get("uri") and data.get("base_dataset"):
        raise events.EventError(
            "a TrainingDataArrived event takes 'base_dataset' with inline 'records', not with 'uri'"
        )
    return data
