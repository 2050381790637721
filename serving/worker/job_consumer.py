"""The worker side of queued inference: consume ``lifecycle.inference-requests`` (one consumer group
shared by all workers), answer each item through the engine (a job's items join the batch together),
store results in Mongo ``jobs`` and publish the job's results on ``lifecycle.inference-results``.

The offset is committed after the job's last result is stored. A worker killed mid-job leaves it
uncommitted: the job is redelivered to another worker, which skips the items already answered.
"""

from __future__ import annotations

import logging
import queue
from typing import Any

from lifecycle import events, jobstore, topics
from lifecycle.background import Background
from lifecycle.consumer import RetryPolicy, consume
from lifecycle.settings import Settings
from lifecycle.store import JOBS, Store, now
from lifecycle.v1.events_pb2 import InferenceJobQueued
from serving.worker.engine import Delta, Engine, EngineError, QueueFullError, SamplingParams

log = logging.getLogger(__name__)
GROUP = "lifecycle-jobs"


class JobConsumer:
    """Answers queued jobs with ``engine``; ``name`` (the worker's) is recorded with each result."""

    def __init__(self, settings: Settings, name: str, engine: Engine) -> None:
        self.settings, self.name, self.engine = settings, name, engine
        self.background = Background("jobs", self._run)
        self.start, self.stop = self.background.start, self.background.stop
        self._stop = self.background.stopping

    def _run(self) -> None:
        from confluent_kafka import Consumer

        quiet = topics.quiet_logger(__name__)
        consumer = Consumer(
            topics.consumer_config(self.settings, GROUP, **{"logger": quiet, "max.poll.interval.ms": 900_000})
        )
        consumer.subscribe([topics.INFERENCE_REQUESTS])
        store = Store.connect(self.settings)
        try:
            # No model yet: the job waits (uncommitted) for this worker or a peer.
            consume(
                consumer,
                lambda payload: self.run_job(store, payload),
                self._stop,
                settings=self.settings,
                name=f"{self.name} jobs",
                ready=lambda: self.engine.current is not None,
                policy=RetryPolicy(attempts=3, pause=1.0),
            )
        finally:
            consumer.close()
            store.close()

    def run_job(self, store: Store, payload: bytes) -> None:
        try:
            job = events.decode(payload)
        except events.EventError as exc:
            log.warning("skipping a malformed job message: %s", exc)
            return
        if not isinstance(job, InferenceJobQueued) or not job.job_id:
            log.warning("skipping a %s message: not an InferenceJobQueued with a job_id", job.type)
            return
        job_id, items = job.job_id, [events.to_dict(it) for it in job.items]
        todo = [it for it in items if store.get(JOBS, jobstore.result_id(job_id, str(it.get("id")))) is None]
        results: queue.Queue[tuple[dict[str, Any], dict[str, Any]]] = queue.Queue()
        for item in todo:  # all of them join the running batch; results are written here, not in the engine
            self._submit(item, lambda it, res: results.put((it, res)))
        for _ in todo:
            item, result = results.get()
            doc = {
                "_id": jobstore.result_id(job_id, str(item.get("id"))),
                "kind": "result",
                "job_id": job_id,
                "item_id": str(item.get("id")),
                "worker": self.name,
                "created_at": now(),
                **result,
            }
            store.insert_once(JOBS, doc)
        view = jobstore.view(store, job_id) or {}
        store.update(JOBS, job_id, {"status": view.get("status", "succeeded"), "finished_at": now()})
        events.publish(self.settings, topics.INFERENCE_RESULTS, job_id, jobstore.completed_event(view))

    def _submit(self, item: dict[str, Any], finish: Any) -> None:
        parts: list[str] = []

        def sink(d: Delta) -> None:
            parts.append(d.text)
            if d.finish_reason == "error":
                finish(item, {"error": d.error})
            elif d.finish_reason:
                usage = {"prompt_tokens": d.prompt_tokens, "completion_tokens": d.completion_tokens}
                finish(
                    item,
                    {"text": "".join(parts), "finish_reason": d.finish_reason, "version": d.version, "usage": usage},
                )

        try:
            params = SamplingParams(
                max_tokens=int(item.get("max_tokens", 64)),
                temperature=float(item.get("temperature", 0.0)),
                top_p=float(item.get("top_p", 1.0)),
                stop=list(item.get("stop") or []),
            )
            messages = item.get("messages")
            prompt = item.get("prompt")
            if messages is None and prompt is not None:
                messages = [{"role": "user", "content": str(prompt)}]
            while True:
                try:
                    self.engine.submit(messages=messages, params=params, sink=sink)
                    return
                except QueueFullError:
                    if self._stop.is_set():
                        raise
                    self._stop.wait(0.2)  # back-pressure: the item waits for room
        except (EngineError, ValueError, TypeError) as exc:
            finish(item, {"error": f"item {item.get('id')}: {exc}"})
