"""The one consume loop of the project's long-running Kafka consumers, and its retry policy.

A message's offset is committed only after its handler returned, so a crash in between brings it
back. A handler that raises gets the message again after a pause that doubles from try to try; after
``RetryPolicy.attempts`` tries the message is published to ``<topic>.dlq`` as a ``DeadLetter`` event
(original key, payload, error, attempts) and committed, so one poison message cannot hold up its
partition for ever. A message the consumer is not ready for yet (``ready()`` false) is read again
without counting as a try.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lifecycle import events, topics
from lifecycle.settings import Settings
from lifecycle.v1 import events_pb2

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    """Tries of one message before it goes to the dead-letter topic."""
    pause: float = 1.0
    """Seconds before the second try; each later pause doubles, up to ``max_pause``."""
    max_pause: float = 60.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.pause < 0 or self.max_pause < self.pause:
            raise ValueError(f"invalid retry policy {self}: attempts >= 1, 0 <= pause <= max_pause")

    def wait(self, failed: int) -> float:
        """The pause after the ``failed``-th failed try."""
        return float(min(self.max_pause, self.pause * 2 ** (failed - 1)))


def dead_letter(settings: Settings, msg: Any, consumer: str, error: str, attempts: int) -> None:
    """Publish ``msg`` to its topic's dead-letter topic, under its own key; raises ``PublishError``."""
    value = msg.value() or b""
    letter = events.new_event(
        events_pb2.DeadLetter, topic=msg.topic(), partition=msg.partition(), offset=msg.offset(), consumer=consumer,
        error=error[-4000:], attempts=attempts, payload=value.decode("utf-8", errors="replace"),
    )  # fmt: skip
    key = (msg.key() or b"").decode("utf-8", errors="replace")
    events.publish(settings, topics.dlq(msg.topic()), key, letter)


def consume(
    consumer: Any,
    handle: Callable[[bytes], None],
    stop: threading.Event,
    *,
    settings: Settings,
    name: str,
    ready: Callable[[], bool] | None = None,
    policy: RetryPolicy = RetryPolicy(),
    not_ready_pause: float = 1.0,
) -> None:
    """Poll ``consumer`` until ``stop`` is set and ``handle`` each message's value (see the module).
    A fatal consumer error (e.g. fenced: another live member with the same ``group.instance.id``)
    ends the loop with an error naming ``name``."""
    from confluent_kafka import KafkaError, KafkaException, TopicPartition

    failures: dict[tuple[str, int, int], int] = {}
    while not stop.is_set():
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        if msg.error():
            # librdkafka reports a fatal error as a _FATAL message whose .fatal() is False: check the code.
            if msg.error().code() == KafkaError._FATAL:
                log.error("%s: the consumer stopped: %s", name, msg.error())
                return
            continue
        where = (msg.topic(), msg.partition(), msg.offset())
        again = TopicPartition(*where)
        if ready is not None and not ready():
            consumer.seek(again)
            stop.wait(not_ready_pause)
            continue
        try:
            handle(msg.value())
        except Exception as exc:
            failed = failures[where] = failures.get(where, 0) + 1
            if failed < policy.attempts:
                log.exception("%s: try %d of %d of %s[%d]@%d failed; again", name, failed, policy.attempts, *where)
                consumer.seek(again)
                stop.wait(policy.wait(failed))
                continue
            try:
                dead_letter(settings, msg, name, f"{type(exc).__name__}: {exc}", failed)
            except events.PublishError as publish_error:  # not committed: it comes again, and is retried
                log.error("%s: could not dead-letter %s[%d]@%d: %s", name, *where, publish_error)
                consumer.seek(again)
                stop.wait(policy.max_pause)
                continue
            log.error("%s: gave up on %s[%d]@%d after %d tries (%s); sent to %s", name, *where, failed, exc,
                      topics.dlq(msg.topic()))  # fmt: skip
        failures.pop(where, None)
        try:
            consumer.commit(message=msg, asynchronous=False)
        except KafkaException as exc:  # e.g. a rebalance took the partition: its new owner reads it again
            log.warning("%s: commit of %s[%d]@%d failed: %s", name, *where, exc)
