"""Kafka events: build, encode (proto3 JSON), decode and publish the messages of ``proto/``.

Field names stay as written in the .proto (``model_name``, not ``modelName``); parsers accept both.
Publishing waits for the broker's acknowledgement (idempotent producer, acks=all) and raises
``PublishError`` when it does not come, so a caller can tell "durably queued" from "not sent".
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
import uuid
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from lifecycle import topics
from lifecycle.settings import Settings
from lifecycle.v1 import events_pb2

EVENT_TYPES: dict[str, type[Message]] = {
    name: getattr(events_pb2, name)
    for name in (
        "TrainingDataArrived",
        "ModelRegistered",
        "ModelPromoted",
        "ModelRolledBack",
        "ModelLoadFailed",
        "RolloutStarted",
        "RolloutStepped",
        "RolloutPromoted",
        "RolloutRolledBack",
        "PipelineEvent",
        "InferenceJobQueued",
        "InferenceJobCompleted",
        "DeadLetter",
        "FeedbackReceived",
        "RecordDeleted",
        "ModelTainted",
    )
}

# librdkafka's own log lines (retries while a coordinator loads, …) go here, not to stderr;
# a delivery failure still surfaces as PublishError.


class PublishError(RuntimeError):
    """The broker did not acknowledge an event in time."""


class EventError(ValueError):
    """A payload is not a valid event; the message names the field."""


def new_event(kind: type[Message], event_id: str | None = None, **fields: Any) -> Message:
    """A message of ``kind`` with ``event_id``, ``type`` and ``occurred_at`` filled in."""
    msg = kind()
    json_format.ParseDict(without_nulls(fields), msg)
    msg.event_id = event_id or str(uuid.uuid4())
    msg.type = kind.DESCRIPTOR.name
    msg.occurred_at.FromDatetime(dt.datetime.now(dt.UTC))
    return msg


def without_nulls(value: Any) -> Any:
    """``value`` with every None (at any depth) left out, as proto3 JSON has no null for scalars."""
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


def to_dict(msg: Message) -> dict[str, Any]:
    return dict(json_format.MessageToDict(msg, preserving_proto_field_name=True))


def encode(msg: Message) -> bytes:
    return json.dumps(to_dict(msg), separators=(",", ":")).encode()


def decode(payload: bytes | str | dict[str, Any]) -> Message:
    """The message a JSON payload describes (by its ``type``); ``EventError`` when it is not valid."""
    try:
        data = json.loads(payload) if isinstance(payload, bytes | str) else dict(payload)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EventError(f"payload is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise EventError("payload must be a JSON object")
    kind = EVENT_TYPES.get(str(data.get("type")))
    if kind is None:
        raise EventError(f"field 'type' is {data.get('type')!r}; known: {', '.join(EVENT_TYPES)}")
    msg = kind()
    try:
        json_format.ParseDict(data, msg)
    except json_format.ParseError as exc:
        raise EventError(str(exc)) from None
    if not msg.event_id:
        raise EventError("field 'event_id' is missing")
    return msg


def publish(settings: Settings, topic: str, key: str, msg: Message, timeout: float = 15.0) -> None:
    """Send one event and wait until the broker has it (all in-sync replicas)."""
    publish_raw(settings, topic, key, encode(msg), timeout)


_producers: dict[tuple[int, str, int], Any] = {}
_producers_lock = threading.Lock()


def _producer(settings: Settings, timeout_ms: int) -> Any:
    """One producer per process, broker (with its credentials) and timeout, kept: an idempotent
    producer's first message waits for its producer id (measured 0.51 s on the local broker, then
    0.004 s per message), which a promotion would otherwise pay on every event. Keyed by pid: a forked
    child (an Airflow task) makes its own, librdkafka's threads do not survive a fork."""
    from confluent_kafka import Producer

    key = (os.getpid(), json.dumps(topics.client_config(settings), sort_keys=True), timeout_ms)
    with _producers_lock:
        if key not in _producers:
            config = topics.producer_config(
                settings, **{"message.timeout.ms": timeout_ms, "logger": topics.quiet_logger(__name__)}
            )
            _producers[key] = Producer(config)
        return _producers[key]


def publish_raw(settings: Settings, topic: str, key: str, value: bytes, timeout: float = 15.0) -> None:
    """Send one JSON payload as it is; same guarantees as ``publish``."""
    producer = _producer(settings, int(timeout * 1000))
    outcome: list[Any] = []
    producer.produce(topic, key=key.encode(), value=value, on_delivery=lambda err, _m: outcome.append(err))
    producer.flush(timeout + 5)
    if not outcome:
        raise PublishError(f"Kafka at {settings.kafka_bootstrap} did not acknowledge {topic} within {timeout:.0f}s")
    if outcome[0] is not None:
        raise PublishError(f"Kafka at {settings.kafka_bootstrap} refused the message on {topic}: {outcome[0]}")
