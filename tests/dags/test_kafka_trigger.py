"""Kafka-triggered runs in the live Airflow: a message starts a run with its payload, a duplicate
trains once, a malformed message fails in ingest with the reason in Mongo while the watcher goes on,
and a killed triggerer loses nothing."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import uuid
from pathlib import Path
from typing import Any

import pytest

from lifecycle import events, topics
from lifecycle.airflow_client import call, dag_ids
from lifecycle.settings import Settings
from lifecycle.stack import manager, process
from lifecycle.stack.process import wait_for
from lifecycle.store import TRAINING_EVENTS, Store
from lifecycle.v1 import events_pb2

pytestmark = pytest.mark.stack
DAG = "llm_lifecycle_kafka"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def watching(stack: Settings) -> Settings:
    assert wait_for(lambda: DAG in dag_ids(stack), timeout=120) == "ok"
    call(stack, "PATCH", f"/api/v2/dags/{DAG}", {"is_paused": False})
    return stack


def runs(s: Settings) -> dict[str, dict[str, Any]]:
    return {
        r["dag_run_id"]: r for r in call(s, "GET", f"/api/v2/dags/{DAG}/dagRuns?limit=100&order_by=-id")["dag_runs"]
    }


def settle(s: Settings, run_ids: set[str]) -> dict[str, dict[str, str]]:
    """Wait for the runs to end; their task states."""
    path = f"/api/v2/dags/{DAG}/dagRuns/"
    ended = ("success", "failed")
    assert wait_for(lambda: all(call(s, "GET", path + r)["state"] in ended for r in run_ids), timeout=600) == "ok"
    return {
        r: {t["task_id"]: t["state"] for t in call(s, "GET", path + r + "/taskInstances")["task_instances"]}
        for r in run_ids
    }


def message(tiny: Path, **extra: Any) -> Any:
    recs = [json.loads(line) for line in (REPO / "data/toy/train.jsonl").read_text().splitlines()[:32]]
    recs.append({"instruction": f"unique {uuid.uuid4()}", "output": "ok"})  # a new dataset every time
    params = {"base_model": str(tiny), "max_steps": 1, "eval_limit": 2, "model_name": f"kafka-{uuid.uuid4().hex[:6]}"}
    return events.new_event(events_pb2.TrainingDataArrived, dataset="toy-kafka", records=recs, params=params, **extra)


def new_runs_after(s: Settings, before: set[str], count: int) -> set[str]:
    assert wait_for(lambda: len(set(runs(s)) - before) >= count, timeout=120, interval=0.5) == "ok"
    return set(runs(s)) - before


def test_a_message_starts_a_run_and_a_duplicate_trains_once(watching: Settings, tiny_llama_dir: Path) -> None:
    s = watching
    before = set(runs(s))
    msg = message(tiny_llama_dir)
    t0 = dt.datetime.now(dt.UTC)
    events.publish(s, topics.TRAINING_DATA, "toy-kafka", msg)
    events.publish(s, topics.TRAINING_DATA, "toy-kafka", msg)  # delivered twice
    new_runs_after(s, before, 1)
    # Each delivery may get its own run, created in any order: wait for the claim, then for every
    # run created so far (the claimer among them) to end.
    assert wait_for(lambda: _claimed(s, msg.event_id), timeout=300) == "ok"
    settle(s, set(runs(s)) - before)
    states = settle(s, set(runs(s)) - before)  # and any run created while the first ones ran
    trained = [r for r, t in states.items() if t.get("fine_tune") == "success"]
    assert len(trained) == 1, states
    assert all(t["claim"] == "success" for t in states.values())
    started = min(dt.datetime.fromisoformat(runs(s)[r]["start_date"]) for r in states)
    assert (started - t0).total_seconds() < 60
    with Store.connect(s) as store:
        doc = store.get(TRAINING_EVENTS, msg.event_id)
    assert doc is not None and doc["state"] == "claimed" and doc["dag_run_id"] == trained[0]


def test_a_malformed_message_fails_in_ingest_and_the_watcher_goes_on(watching: Settings, tiny_llama_dir: Path) -> None:
    s = watching
    bad = events.new_event(events_pb2.TrainingDataArrived, dataset="empty")  # neither records nor uri
    events.publish(s, topics.TRAINING_DATA, "empty", bad)
    assert wait_for(lambda: _event(s, bad.event_id).get("state") == "failed", timeout=300) == "ok"
    doc = _event(s, bad.event_id)
    assert "needs 'records', 'uri' or 'base_dataset'" in doc["error"]
    assert settle(s, {doc["dag_run_id"]})[doc["dag_run_id"]]["ingest"] == "failed"

    # A producer may not lower the gate: the event fails in ingest naming the param, nothing trains.
    spoof = message(tiny_llama_dir)
    spoof.params.update({"promotion_margin": -1})
    events.publish(s, topics.TRAINING_DATA, "toy-kafka", spoof)
    assert wait_for(lambda: _event(s, spoof.event_id).get("state") == "failed", timeout=300) == "ok"
    assert "params.promotion_margin may not be set by an event" in _event(s, spoof.event_id)["error"]

    good = message(tiny_llama_dir)  # the watcher goes on with the next message
    events.publish(s, topics.TRAINING_DATA, "toy-kafka", good)
    assert wait_for(lambda: _claimed(s, good.event_id), timeout=300) == "ok"
    run_id = _event(s, good.event_id)["dag_run_id"]
    tasks = settle(s, {run_id})[run_id]
    assert tasks.pop("follow_rollout") == "skipped" and set(tasks.values()) == {"success"}, tasks  # direct: no rollout


def test_a_killed_triggerer_loses_nothing(watching: Settings, tiny_llama_dir: Path) -> None:
    from plugins import kafka_intake

    s = watching
    triggerer = manager.select(s, ["airflow-triggerer"])[0]
    before = set(runs(s))
    msg = message(tiny_llama_dir)
    events.publish(s, topics.TRAINING_DATA, "toy-kafka", msg)
    pid = process.read_pid(triggerer.pidfile)
    assert pid is not None
    os.killpg(pid, signal.SIGKILL)  # whatever it was doing with the message
    assert wait_for(lambda: process.read_pid(triggerer.pidfile) is None, timeout=10) == "ok"
    assert manager.up(s, ["airflow-triggerer"], report=lambda m: None) == ["airflow-triggerer"]
    # The reconcile DAG's task, without its grace period: re-publish whatever is stuck.
    assert wait_for(lambda: _landed(s, msg.event_id), timeout=120) == "ok"
    kafka_intake.redeliver_stuck(grace=dt.timedelta(0))
    assert wait_for(lambda: _claimed(s, msg.event_id), timeout=300) == "ok"
    states = settle(s, set(runs(s)) - before)
    assert len([r for r, t in states.items() if t.get("fine_tune") == "success"]) == 1, states


def _event(s: Settings, key: str) -> dict[str, Any]:
    with Store.connect(s) as store:
        return store.get(TRAINING_EVENTS, key) or {}


def _landed(s: Settings, key: str) -> bool:
    with Store.connect(s) as store:
        return store.get(TRAINING_EVENTS, key) is not None


def _claimed(s: Settings, key: str) -> bool:
    with Store.connect(s) as store:
        return (store.get(TRAINING_EVENTS, key) or {}).get("state") == "claimed"
