"""Read a whole Kafka topic as it is now (from offset 0 up to the current end), for assertions."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from lifecycle import topics
from lifecycle.settings import Settings


def read_topic(settings: Settings, topic: str, keep: Callable[[Any, dict], bool], timeout: float = 30) -> list[dict]:
    """JSON values of the messages of ``topic`` for which ``keep(message, value)`` is true."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(topics.consumer_config(settings, f"reader-{uuid.uuid4().hex}"))
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        parts = [TopicPartition(topic, p) for p in meta.partitions]
        ends = {p.partition: consumer.get_watermark_offsets(p, timeout=10)[1] for p in parts}
        consumer.assign([TopicPartition(topic, p.partition, 0) for p in parts])
        out, deadline = [], time.monotonic() + timeout
        positions = dict.fromkeys(ends, 0)
        while any(positions[p] < ends[p] for p in ends) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            positions[msg.partition()] = msg.offset() + 1
            try:
                value = json.loads(msg.value())
            except ValueError:  # not JSON (a test may put such a message on a topic): not what we read
                continue
            if keep(msg, value):
                out.append(value)
        return out
    finally:
        consumer.close()
