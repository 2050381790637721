"""Kafka with SASL/SCRAM: the local broker started by the project's own stack code with a user, every
client of the project configured from the same settings; the right password round-trips an event, a
wrong one and none are refused by the broker."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lifecycle import events, topics
from lifecycle.settings import Settings, load_settings
from lifecycle.stack import manager
from lifecycle.v1 import events_pb2
from tests.kafka_read import read_topic

pytestmark = pytest.mark.stack  # needs the Kafka jars the test stack fetched


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def secured(stack: Settings, tmp_path: Path) -> Iterator[Settings]:
    """A broker of its own (free ports, a scratch home) that knows one SCRAM user."""
    port = _free_port()
    while _free_port() == port + 1:  # the controller takes port+1
        port = _free_port()
    s = load_settings(home=tmp_path / "home", kafka_port=port, kafka_username="lifecycle",
                      kafka_password=f"pw-{uuid.uuid4().hex[:12]}", kafka_heap="256m")  # fmt: skip
    assert manager.up(s, ["kafka"], report=lambda m: None) == ["kafka"]
    try:
        yield s
    finally:
        manager.down(s, ["kafka"], report=lambda m: None)


def test_a_scram_user_round_trips_events_and_a_wrong_password_is_refused(secured: Settings) -> None:
    s = secured
    props = (s.service_data_dir("kafka") / "config" / "server.properties").read_text()
    assert f"listeners=SASL_PLAINTEXT://{s.host}:{s.kafka_port}" in props
    assert "sasl.enabled.mechanisms=SCRAM-SHA-512" in props
    assert topics.client_config(s)["security.protocol"] == "SASL_PLAINTEXT"
    msg = events.new_event(events_pb2.ModelRegistered, model_name="sasl", version=1)
    events.publish(s, topics.MODEL_EVENTS, "sasl", msg)  # topics were created by `up` as that user
    got = read_topic(s, topics.MODEL_EVENTS, lambda m, v: v.get("event_id") == msg.event_id)
    assert len(got) == 1
    for wrong in (s.model_copy(update={"kafka_password": "not-it"}),
                  s.model_copy(update={"kafka_username": "", "kafka_password": ""})):  # fmt: skip
        with pytest.raises(events.PublishError):
            events.publish(wrong, topics.MODEL_EVENTS, "sasl", msg, timeout=5)


def test_user_and_password_go_together() -> None:
    with pytest.raises(ValueError, match="kafka_username and kafka_password go together"):
        load_settings(kafka_username="u")
