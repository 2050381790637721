"""The listener plugin reports DAG-run and task state changes to Kafka and Mongo."""

from __future__ import annotations

import pytest

from lifecycle import topics
from lifecycle.airflow_client import trigger_and_wait
from lifecycle.settings import Settings
from lifecycle.store import PIPELINE_EVENTS, Store
from tests.kafka_read import read_topic

pytestmark = pytest.mark.stack


def test_a_dag_run_and_its_tasks_are_reported(stack: Settings) -> None:
    run = trigger_and_wait(stack, "stack_check", {})
    assert run["state"] == "success"
    run_id = run["dag_run_id"]
    expected = {("", "running"), ("", "success")} | {
        (t, s) for t in ("check_kafka", "check_mongo", "check_mlflow") for s in ("running", "success")
    }

    # Task events are flushed by the task process; the scheduler's run events are sent asynchronously.
    def seen_on_kafka() -> set[tuple[str, str]]:
        events = read_topic(stack, topics.PIPELINE_EVENTS, lambda _m, v: v.get("run_id") == run_id)
        assert all(e["type"] == "PipelineEvent" and e["dag_id"] == "stack_check" for e in events)
        return {(e.get("task_id", ""), e["state"]) for e in events}

    from lifecycle.stack.process import wait_for

    assert wait_for(lambda: seen_on_kafka() == expected, timeout=60) == "ok", seen_on_kafka()
    with Store.connect(stack) as store:
        docs = list(store.db[PIPELINE_EVENTS].find({"run_id": run_id}))
    assert {(d.get("task_id", ""), d["state"]) for d in docs} == expected
