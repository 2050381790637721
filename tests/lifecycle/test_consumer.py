"""The one consume loop against the test stack's Kafka: a message is committed only once handled, a
failing one is tried again with growing pauses, a poison one ends on ``<topic>.dlq`` after the
policy's tries, and the messages behind it are not held up."""

from __future__ import annotations

import threading
import uuid
from collections import Counter

import pytest

from lifecycle import events, topics
from lifecycle.consumer import RetryPolicy, consume
from lifecycle.settings import Settings
from lifecycle.stack.process import wait_for
from tests.kafka_read import read_topic

pytestmark = pytest.mark.stack


def test_pauses_double_up_to_the_cap_and_a_bad_policy_is_refused() -> None:
    policy = RetryPolicy(attempts=5, pause=0.5, max_pause=3.0)
    assert [policy.wait(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    with pytest.raises(ValueError, match="attempts >= 1"):
        RetryPolicy(attempts=0)


def test_a_poison_message_is_dead_lettered_and_the_rest_go_through(stack: Settings) -> None:
    from confluent_kafka import Consumer

    topic = f"test.consume-{uuid.uuid4().hex[:8]}"
    topics.ensure_topics(stack, (topic, topics.dlq(topic)))
    for value in (b"a", b"poison", b"flaky", b"b"):
        events.publish_raw(stack, topic, "same-key", value)  # one key: one partition, in this order
    tries: Counter[bytes] = Counter()
    handled: list[bytes] = []

    def handle(value: bytes) -> None:
        tries[value] += 1
        if value == b"poison" or (value == b"flaky" and tries[value] < 3):
            raise RuntimeError(f"cannot handle {value!r} (try {tries[value]})")
        handled.append(value)

    group = f"test-consume-{uuid.uuid4().hex[:8]}"
    stop = threading.Event()

    def run() -> None:
        consumer = Consumer(topics.consumer_config(stack, group))
        consumer.subscribe([topic])
        try:
            consume(consumer, handle, stop, settings=stack, name="test", policy=RetryPolicy(attempts=4, pause=0.05))
        finally:
            consumer.close()

    thread = threading.Thread(target=run)
    thread.start()
    try:
        assert wait_for(lambda: b"b" in handled, timeout=60) == "ok", (handled, tries)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert handled == [b"a", b"flaky", b"b"] and tries == {b"a": 1, b"poison": 4, b"flaky": 3, b"b": 1}
    letters = read_topic(stack, topics.dlq(topic), lambda m, v: m.key() == b"same-key")
    assert len(letters) == 1, letters
    letter = letters[0]
    assert letter["type"] == "DeadLetter" and letter["payload"] == "poison" and letter["attempts"] == 4
    assert letter["topic"] == topic and letter["consumer"] == "test" and "cannot handle b'poison'" in letter["error"]

    # Everything was committed, the dead-lettered message too: the group starts after the last one.
    handled.clear()
    thread = threading.Thread(target=run)
    stop.clear()
    events.publish_raw(stack, topic, "same-key", b"c")
    thread.start()
    try:
        assert wait_for(lambda: b"c" in handled, timeout=60) == "ok"
    finally:
        stop.set()
        thread.join(timeout=30)
    assert handled == [b"c"]
