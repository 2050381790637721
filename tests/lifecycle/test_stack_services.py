"""The real services of the local stack answer as the platform will use them."""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from lifecycle import topics
from lifecycle.airflow_client import call, dag_ids
from lifecycle.settings import Settings
from lifecycle.stack.process import wait_for

pytestmark = pytest.mark.stack


def test_kafka_round_trip_with_idempotent_producer_and_consumer_group(stack: Settings) -> None:
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient

    existing = AdminClient({"bootstrap.servers": stack.kafka_bootstrap}).list_topics(timeout=10).topics
    assert set(topics.ALL) <= set(existing), "lifecycle topics are created on `up`"

    run = uuid.uuid4().hex
    topic = f"test.roundtrip-{run[:8]}"  # a topic of its own: the lifecycle topics carry live traffic
    assert topics.ensure_topics(stack, (topic,)) == [topic]
    producer = Producer(topics.producer_config(stack))
    delivered = []
    sent = [{"event_id": str(uuid.uuid4()), "n": i, "run": run} for i in range(20)]
    for event in sent:
        producer.produce(
            topic,
            key=run,
            value=json.dumps(event),
            on_delivery=lambda err, msg: delivered.append(err),
        )
    assert producer.flush(30) == 0
    assert delivered == [None] * 20

    group = f"test-{run}"
    consumer = Consumer(topics.consumer_config(stack, group))
    consumer.subscribe([topic])
    got = []
    deadline = time.monotonic() + 60
    try:
        while len(got) < 20 and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None or msg.error():
                continue
            payload = json.loads(msg.value())
            if payload["run"] == run:
                got.append(payload)
            consumer.commit(message=msg, asynchronous=False)
    finally:
        consumer.close()
    # Same key -> same partition -> order kept; idempotence -> no duplicates.
    assert [e["n"] for e in got] == list(range(20))

    # The group committed its offsets: a new member of it sees none of those messages again.
    again = Consumer(topics.consumer_config(stack, group))
    again.subscribe([topic])
    try:
        seen = []
        for _ in range(5):
            msg = again.poll(1.0)
            if msg is not None and not msg.error() and json.loads(msg.value())["run"] == run:
                seen.append(msg)
    finally:
        again.close()
    assert seen == []


def test_mongo_insert_find_index_unique(stack: Settings) -> None:
    from pymongo import ASCENDING, MongoClient
    from pymongo.errors import DuplicateKeyError

    with MongoClient(stack.mongo_uri, serverSelectionTimeoutMS=5000) as client:
        coll = client[stack.mongo_db][f"test_{uuid.uuid4().hex[:8]}"]
        try:
            coll.create_index([("dataset_id", ASCENDING)], unique=True, name="dataset_id_unique")
            coll.insert_one({"dataset_id": "abc", "records": 3})
            with pytest.raises(DuplicateKeyError):
                coll.insert_one({"dataset_id": "abc", "records": 4})
            assert coll.find_one({"dataset_id": "abc"}, {"_id": 0}) == {"dataset_id": "abc", "records": 3}
            assert coll.count_documents({}) == 1
            assert "dataset_id_unique" in coll.index_information()
        finally:
            coll.drop()


def test_mlflow_run_registry_version_and_alias(stack: Settings, tmp_path) -> None:
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient(stack.mlflow_tracking_uri)
    exp_name = f"test-{uuid.uuid4().hex[:8]}"
    exp_id = client.create_experiment(exp_name)
    run = client.create_run(exp_id)
    client.log_param(run.info.run_id, "lora_r", 8)
    for step, loss in enumerate([2.0, 1.5, 1.2]):
        client.log_metric(run.info.run_id, "loss", loss, step=step)
    (tmp_path / "config.json").write_text('{"lr": 0.001}')
    client.log_artifact(run.info.run_id, str(tmp_path / "config.json"))
    client.set_terminated(run.info.run_id)

    back = client.get_run(run.info.run_id)
    assert back.data.params == {"lora_r": "8"}
    assert back.data.metrics["loss"] == 1.2
    assert [m.value for m in client.get_metric_history(run.info.run_id, "loss")] == [2.0, 1.5, 1.2]
    local = mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id,
        artifact_path="config.json",
        dst_path=str(tmp_path / "dl"),
        tracking_uri=stack.mlflow_tracking_uri,
    )
    assert json.loads(Path(local).read_text()) == {"lr": 0.001}

    name = f"test-model-{uuid.uuid4().hex[:8]}"
    client.create_registered_model(name)
    v1 = client.create_model_version(name, f"runs:/{run.info.run_id}/config.json", run_id=run.info.run_id)
    v2 = client.create_model_version(name, f"runs:/{run.info.run_id}/config.json", run_id=run.info.run_id)
    client.set_registered_model_alias(name, "champion", v1.version)
    client.set_registered_model_alias(name, "challenger", v2.version)
    assert client.get_model_version_by_alias(name, "champion").version == v1.version
    client.set_registered_model_alias(name, "champion", v2.version)
    assert client.get_model_version_by_alias(name, "champion").version == v2.version


def test_airflow_health_dags_and_no_import_errors(stack: Settings) -> None:
    with urllib.request.urlopen(f"http://{stack.host}:{stack.airflow_port}/api/v2/monitor/health", timeout=10) as r:
        health = json.loads(r.read())
    for component in ("metadatabase", "scheduler", "triggerer", "dag_processor"):
        assert health[component]["status"] == "healthy", component

    # The dag-processor parses dags/ shortly after start; wait for it, with a deadline.
    assert wait_for(lambda: "stack_check" in dag_ids(stack), timeout=120) == "ok"
    errors = call(stack, "GET", "/api/v2/importErrors")
    assert errors["total_entries"] == 0, errors["import_errors"]


def test_airflow_tasks_reach_kafka_mongo_mlflow_through_connections(stack: Settings) -> None:
    """Run the stack_check DAG in the live Airflow: its tasks use the connections made from settings."""
    assert wait_for(lambda: "stack_check" in dag_ids(stack), timeout=120) == "ok"
    call(stack, "PATCH", "/api/v2/dags/stack_check", {"is_paused": False})
    run = call(stack, "POST", "/api/v2/dags/stack_check/dagRuns", {"logical_date": None})
    path = f"/api/v2/dags/stack_check/dagRuns/{run['dag_run_id']}"
    done = {"success", "failed"}
    assert wait_for(lambda: call(stack, "GET", path)["state"] in done, timeout=300) == "ok"
    tis = call(stack, "GET", path + "/taskInstances")["task_instances"]
    assert {t["task_id"]: t["state"] for t in tis} == {
        "check_kafka": "success",
        "check_mongo": "success",
        "check_mlflow": "success",
    }
    assert call(stack, "GET", path)["state"] == "success"
