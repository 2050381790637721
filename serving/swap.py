"""Hot swap: apply ``ModelPromoted`` / ``ModelRolledBack`` from ``lifecycle.model-events`` to a worker.

Each worker has its own consumer group (``lifecycle-worker-<name>``), so every worker sees every
event. A new version is loaded beside the serving one, warmed, then switched to between decode
steps; requests in flight finish on the version they started on. Events are idempotent by
(model, version): a duplicate or an older promotion is skipped. The offset is committed once the
event is handled: after the swap, or after a failed load was reported as ``ModelLoadFailed`` (the
old version keeps serving). A crash mid-swap leaves the offset uncommitted, so the event comes again.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from lifecycle import events, topics
from lifecycle.v1 import events_pb2
from serving import loader

if TYPE_CHECKING:
    from serving.worker import Worker

log = logging.getLogger(__name__)
_QUIET = logging.getLogger("serving.swap.kafka")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False


def _num(version: str) -> int:
    return int(version) if version.isdigit() else -1


def decide(event: Any, model_name: str, serving: str | None) -> str | None:
    """The version to load for ``event``, or None to skip it (pure; tested on its own)."""
    if getattr(event, "model_name", "") != model_name:
        return None
    if isinstance(event, events_pb2.ModelPromoted):
        if event.alias and event.alias != "champion":
            return None
        return str(event.version) if serving is None or event.version > _num(serving) else None
    if isinstance(event, events_pb2.ModelRolledBack):
        return str(event.version) if str(event.version) != serving else None
    return None


class SwapWatcher:
    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self._stop = threading.Event()
        self._assigned = threading.Event()
        self._thread: threading.Thread | None = None
        self.swaps: list[tuple[str, float]] = []  # (version, seconds from event to serving)

    def start(self, timeout: float = 60.0) -> None:
        """Subscribe and wait for the partition assignment, then consume in a thread."""
        from confluent_kafka import Consumer

        s = self.worker.settings
        # A group of its own per worker, with static membership: a worker restarted after a crash
        # (kill -9, OOM) takes its old member's place at once instead of waiting out the dead member's
        # session (topics.SESSION_TIMEOUT_MS) for the group to rebalance before it can read the
        # champion and serve.
        conf = topics.consumer_config(
            s,
            f"lifecycle-worker-{self.worker.name}",
            **{"auto.offset.reset": "latest", "group.instance.id": self.worker.name, "logger": _QUIET},
        )
        self.consumer = Consumer(conf)
        self.consumer.subscribe([topics.MODEL_EVENTS], on_assign=lambda c, p: self._assigned.set())
        while not self._assigned.is_set() and timeout > 0:
            self.consumer.poll(0.2)  # assignment happens inside poll; nothing is published yet
            timeout -= 0.2
        self._thread = threading.Thread(target=self._run, name="swap-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)
        self.consumer.close()

    def _run(self) -> None:
        from confluent_kafka import KafkaError

        while not self._stop.is_set():
            msg = self.consumer.poll(0.5)
            if msg is not None and msg.error() and msg.error().code() == KafkaError._FATAL:
                # e.g. fenced: another live worker has this worker's name (--name), so the same static member
                log.error("%s: the model-event consumer stopped: %s", self.worker.name, msg.error())
                return
            if msg is None or msg.error():
                continue
            try:
                self.handle(msg.value())
            except Exception:
                # Not committed: read the event again after a pause (a registry or network hiccup).
                log.exception("%s: handling a model event failed; retrying it", self.worker.name)
                from confluent_kafka import TopicPartition

                self.consumer.seek(TopicPartition(msg.topic(), msg.partition(), msg.offset()))
                self._stop.wait(2.0)
                continue
            self.consumer.commit(message=msg, asynchronous=False)

    def handle(self, payload: bytes) -> None:
        import time

        try:
            event = events.decode(payload)
        except events.EventError as exc:
            log.warning("%s: skipping a bad model event: %s", self.worker.name, exc)
            return
        w = self.worker
        serving = w.slot.version if w.slot else None
        version = decide(event, w.settings.model_name, serving)
        if version is None:
            return
        t0 = time.monotonic()
        try:
            slot = loader.load(w.settings, w.settings.model_name, version)
        except loader.LoadError as exc:
            log.error("%s: keeping v%s: %s", w.name, serving, exc)
            failed = events.new_event(
                events_pb2.ModelLoadFailed,
                model_name=w.settings.model_name,
                version=int(version),
                worker=w.name,
                error=str(exc),
            )
            events.publish(w.settings, topics.MODEL_EVENTS, w.settings.model_name, failed)
            return
        w.serve_slot(slot)
        self.swaps.append((version, time.monotonic() - t0))
        log.info("%s: swapped to v%s in %.2fs (download + verify + load)", w.name, version, time.monotonic() - t0)
