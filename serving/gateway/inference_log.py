"""Every request and response to Mongo ``inference_log``, off the request path: a bounded buffer that a
thread drains in batches. When the buffer is full a record is dropped and counted (``/metrics``);
a slow or down Mongo never slows a request. Each batch's records are counted into the evidence
tallies of their rollout or version (``lifecycle/tally.py``) after they are written. Records older
than ``LIFECYCLE_INFERENCE_LOG_DAYS`` are deleted by the same thread (a sweep rather than a TTL index:
FerretDB 1.x does not expire documents). Tallies are written by one thread at a time in a gateway
(``tally_inc``): FerretDB's SQLite backend runs an ``$inc`` as a read-modify-write outside any
transaction, and of two at once on one document one was lost (two threads, 100 each: 100 counted).
Two gateways on FerretDB can still lose a count; on MongoDB nothing is lost. With
``LIFECYCLE_INFERENCE_LOG_CONTENT=metadata`` no prompt or answer is stored, only their sha256."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import queue
import threading
import time
import uuid
from typing import Any

from lifecycle import tally
from lifecycle.background import Background
from lifecycle.settings import Settings
from lifecycle.store import INFERENCE_LOG, TALLIES, Store, now

log = logging.getLogger(__name__)
SWEEP_SECONDS = 3600.0  # between deletions of expired records (the first at start)
_TALLY_LOCK = threading.Lock()


def tally_inc(store: Store, key: str, inc: dict[str, Any]) -> None:
    """``$inc`` a rollout's or version's tally, one writer at a time in this process (see above)."""
    with _TALLY_LOCK:
        store.upsert(TALLIES, key, {"$inc": inc})


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
        if self.settings.inference_log_content == "metadata":
            record = metadata_only(record)
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
        swept = float("-inf")
        while not self._stop.is_set() or not self.buffer.empty():
            if self.settings.inference_log_days > 0 and time.monotonic() - swept >= SWEEP_SECONDS:
                swept = time.monotonic()
                try:
                    store = store or Store.connect(self.settings)
                    self._sweep(store)
                except Exception as exc:  # noqa: BLE001 - a later sweep deletes them
                    log.warning("inference log: expired records not deleted: %s", exc)
                    store = None
            try:
                first = self.buffer.get(timeout=0.5)
            except queue.Empty:
                continue
            docs = [first, *self._drain()]
            try:
                store = store or Store.connect(self.settings)
                store.db[INFERENCE_LOG].insert_many(docs, ordered=False)
                self.metrics.log_written.inc(len(docs))
                for key, inc in tally.increments(docs).items():  # after the records: lost together, if lost
                    tally_inc(store, key, inc)
            except Exception as exc:  # noqa: BLE001 - logging must never take the gateway down
                log.warning("inference log: %d records lost: %s", len(docs), exc)
                self.metrics.log_dropped.inc(len(docs))
                store = None
                self._stop.wait(1.0)
        if store:
            store.close()

    def _sweep(self, store: Store) -> None:
        cutoff = now() - dt.timedelta(days=self.settings.inference_log_days)
        gone = store.db[INFERENCE_LOG].delete_many({"created_at": {"$lt": cutoff}}).deleted_count
        if gone:
            log.info("inference log: %d records older than %g days deleted", gone, self.settings.inference_log_days)


CONTENT = ("prompt", "messages", "output")


def metadata_only(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` without what the user wrote or the model answered; a sha256 of each stands in for it
    (the same question asked twice can still be counted, not read)."""
    kept = {k: v for k, v in record.items() if k not in CONTENT}
    asked = {k: record[k] for k in ("prompt", "messages") if k in record}
    if asked:
        kept["prompt_sha256"] = hashlib.sha256(json.dumps(asked, sort_keys=True).encode()).hexdigest()
    if "output" in record:
        kept["output_sha256"] = hashlib.sha256(str(record["output"]).encode()).hexdigest()
    return kept
