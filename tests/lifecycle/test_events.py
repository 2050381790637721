"""Event payloads: proto3 JSON with the field names of SPEC.md, decoding errors that name the field,
and generated code that matches proto/."""

from __future__ import annotations

import json

import pytest

from lifecycle import events
from lifecycle.protogen import check
from lifecycle.v1 import events_pb2


def test_model_promoted_round_trips_as_spec_json() -> None:
    msg = events.new_event(
        events_pb2.ModelPromoted, model_name="m", version=3, alias="champion", run_id="r1",
        metrics={"accuracy": 0.75}, digests={"adapter_model.safetensors": "ab" * 32},
    )  # fmt: skip
    data = json.loads(events.encode(msg))
    assert data["type"] == "ModelPromoted"
    assert {"event_id", "occurred_at", "model_name", "version", "alias", "run_id", "metrics"} <= set(data)
    assert data["version"] == 3 and data["metrics"] == {"accuracy": 0.75}
    assert data["occurred_at"].endswith("Z")  # RFC 3339
    back = events.decode(events.encode(msg))
    assert back == msg


def test_training_data_arrived_carries_records_or_uri() -> None:
    inline = events.new_event(
        events_pb2.TrainingDataArrived, dataset="toy",
        records=[{"instruction": "q", "output": "a"}], params={"epochs": 2},
    )  # fmt: skip
    data = json.loads(events.encode(inline))
    assert data["records"] == [{"instruction": "q", "output": "a"}] and data["params"] == {"epochs": 2}
    by_uri = events.decode(
        {"event_id": "e1", "type": "TrainingDataArrived", "dataset": "toy", "uri": "file:///x.jsonl"}
    )
    assert by_uri.uri == "file:///x.jsonl"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{nope", "payload is not JSON"),
        (b'{"type": "Nope", "event_id": "1"}', "field 'type' is 'Nope'; known: TrainingDataArrived"),
        (b'{"type": "ModelPromoted", "version": "three", "event_id": "1"}', "version"),
        (b'{"type": "ModelPromoted", "model_name": "m"}', "field 'event_id' is missing"),
    ],
)
def test_bad_payloads_name_what_is_wrong(payload: bytes, reason: str) -> None:
    with pytest.raises(events.EventError) as err:
        events.decode(payload)
    assert reason in str(err.value)


def test_generated_code_matches_the_proto_files() -> None:
    assert check() == []
