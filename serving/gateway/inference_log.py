"""Every request and response to Mongo ``inference_log``, off the request path: a bounded buffer that a
thread drains in batches. When the buffer is full a record is dropped and counted (``/metrics``);
a slow or down Mongo never slows a request."""

from __future__ import annotations

import logging
import queue
import uuid
from typing import Any

from lifecycle.background import Background
from lifecycle.settings import Settings
from lifecycle.store import INFERENCE_LOG, Store, now

log = logging.getLogger(__name__)


class InferenceLog:
    def __init__(self, settings: Settings, metrics: Any, capacity: int = 10_000, batch: int = 256) -> None:
        self.settings = settings
        self.metrics = metrics
        self.buffer: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=capacity)
        self.batch = batch
        self.background = Background("inference-log", self._run)
        self.start, self.stop = self.background.start, self.background.stop
        self._stop = self.background.stopping

    def add(self, record: dict[str, Any]) -> None:
        record = {"_id": uuid.uuid4().hex, "created_at": now(), **record}
        try:
            self.buffer.put_nowait(record)
        except queue.Full:
            self.metrics.log_dropped.inc()

    def _drain(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while len(out) < self.batch:
            try:
                out.append(self.buffer.get_nowait())
            except queue.Empty:
                break
        return out

    def _run(self) -> None:
        store: Store | None = None
        while not self._stop.is_set() or not self.buffer.empty():
            try:
                first = self.buffer.get(timeout=0.5)
            except queue.Empty:
                continue
            docs = [first, *self._drain()]
            try:
                store = store or Store.connect(self.settings)
                store.db[INFERENCE_LOG].insert_many(docs, ordered=False)
                self.metrics.log_written.inc(len(docs))
            except Exception as exc:  # noqa: BLE001 - logging must never take the gateway down
                log.warning("inference log: %d records lost: %s", len(docs), exc)
                self.metrics.log_dropped.inc(len(docs))
                store = None
                self._stop.wait(1.0)
        if store:
            store.close()
