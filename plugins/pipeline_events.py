"""Airflow listener: DAG-run and task state changes -> Kafka ``lifecycle.pipeline-events`` + Mongo.

Loaded by Airflow from the plugins folder (``LifecyclePipelineEventsPlugin``). DAG-run hooks run in
the scheduler and task hooks in the task's worker process, so nothing here may block or raise:
Kafka sends are asynchronous (the producer is flushed briefly at process exit), the Mongo write has
a one-second server-selection timeout, and any failure is logged and dropped. Only the DAGs of this
project (tag ``llm-lifecycle``) are reported.
"""

from __future__ import annotations

import atexit
import logging
from functools import cache
from typing import Any, ClassVar

from airflow.listeners import hookimpl
from airflow.plugins_manager import AirflowPlugin

log = logging.getLogger(__name__)


@cache
def _producer() -> Any:
    from confluent_kafka import Producer

    from lifecycle import topics
    from lifecycle.settings import load_settings

    quiet = topics.quiet_logger(__name__)
    producer = Producer(topics.producer_config(load_settings(), **{"message.timeout.ms": 10_000, "logger": quiet}))
    atexit.register(producer.flush, 3)
    return producer


@cache
def _collection() -> Any:
    from pymongo import MongoClient

    from lifecycle.settings import load_settings
    from lifecycle.store import PIPELINE_EVENTS

    s = load_settings()
    client: MongoClient[dict[str, Any]] = MongoClient(
        s.mongo_uri, serverSelectionTimeoutMS=1000, connectTimeoutMS=1000, socketTimeoutMS=2000, tz_aware=True
    )  # a stalled MongoDB must not stall the scheduler this listener runs in
    return client[s.mongo_db][PIPELINE_EVENTS]


def build_event(dag_id: str, run_id: str, state: str, task_id: str = "", try_number: int = 0) -> Any:
    from lifecycle import events
    from lifecycle.v1 import events_pb2

    return events.new_event(
        events_pb2.PipelineEvent, dag_id=dag_id, run_id=run_id, task_id=task_id, state=state, try_number=try_number
    )


def emit(dag_id: str, run_id: str, state: str, task_id: str = "", try_number: int = 0) -> None:
    """Send one state change to Kafka and Mongo; never raises."""
    try:
        from lifecycle import events, topics

        event = build_event(dag_id, run_id, state, task_id, try_number)
        producer = _producer()
        producer.produce(topics.PIPELINE_EVENTS, key=dag_id.encode(), value=events.encode(event))
        producer.poll(0)
        doc = events.to_dict(event)
        _collection().insert_one({"_id": doc["event_id"], **doc})
    except Exception:  # a listener must never break the scheduler or a task
        log.warning("could not publish pipeline event %s %s %s", dag_id, task_id, state, exc_info=True)


def _ours(dag: Any) -> bool:
    return dag is not None and "llm-lifecycle" in (getattr(dag, "tags", None) or ())


class PipelineEventsListener:
    @hookimpl
    def on_dag_run_running(self, dag_run: Any, msg: str) -> None:
        self._dag_run(dag_run, "running")

    @hookimpl
    def on_dag_run_success(self, dag_run: Any, msg: str) -> None:
        self._dag_run(dag_run, "success")

    @hookimpl
    def on_dag_run_failed(self, dag_run: Any, msg: str) -> None:
        self._dag_run(dag_run, "failed")

    def _dag_run(self, dag_run: Any, state: str) -> None:
        try:
            ours = _ours(getattr(dag_run, "dag", None)) or "llm-lifecycle" in _tags_of(dag_run)
        except Exception:  # e.g. a detached ORM object in the scheduler: report rather than guess
            log.warning("could not read the tags of %s", dag_run, exc_info=True)
            return
        if ours:
            emit(dag_run.dag_id, dag_run.run_id, state)

    @hookimpl
    def on_task_instance_running(self, previous_state: Any, task_instance: Any) -> None:
        self._task(task_instance, "running")

    @hookimpl
    def on_task_instance_success(self, previous_state: Any, task_instance: Any) -> None:
        self._task(task_instance, "success")

    @hookimpl
    def on_task_instance_failed(self, previous_state: Any, task_instance: Any, error: Any) -> None:
        self._task(task_instance, "failed")

    def _task(self, ti: Any, state: str) -> None:
        task = getattr(ti, "task", None)
        if not _ours(getattr(task, "dag", None)):
            return
        emit(ti.dag_id, ti.run_id, state, ti.task_id, int(getattr(ti, "try_number", 0) or 0))
        if state in ("success", "failed"):
            try:
                _producer().flush(3)  # the task process exits soon after
            except Exception:
                log.warning("could not flush pipeline events", exc_info=True)


def _tags_of(dag_run: Any) -> set[str]:
    tags = getattr(getattr(dag_run, "dag_model", None), "tags", None) or []
    return {getattr(t, "name", t) for t in tags}


class LifecyclePipelineEventsPlugin(AirflowPlugin):
    name = "lifecycle_pipeline_events"
    listeners: ClassVar[list[Any]] = [PipelineEventsListener()]
