"""Services of the stack killed (SIGKILL) under work, then started again by the project's own `up`:
nothing acknowledged is lost, nothing is applied twice, and the champion alias ends where the decisions
say. Each test restores the stack before it ends (a later test finds every service up)."""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymongo.errors import PyMongoError

from lifecycle import lease, registry, topics
from lifecycle.settings import Settings, load_settings
from lifecycle.stack import process
from lifecycle.stack.serving import gateway_url
from lifecycle.store import DATASETS, JOBS, MODEL_CONFIGS, Store
from tests.kafka_read import read_topic
from tests.services import kill, restart
from tests.serving.conftest import serving_tier
from training.config import TrainConfig
from training.evaluate import evaluate
from training.launch import run_training
from training.promote import PromotionError, promote

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def tier(stack: Settings, tiny_llama_dir: Path) -> Iterator[Settings]:
    with serving_tier(tiny_llama_dir, 18600, "faults") as s:
        yield s


def test_kafka_killed_while_jobs_are_queued_and_answered_loses_none_and_answers_each_once(tier: Settings) -> None:
    s = tier
    accepted: list[str] = []
    refused: list[int] = []
    stop = threading.Event()

    def produce() -> None:
        i = 0
        while not stop.is_set():
            body = {"items": [{"id": f"i{k}", "prompt": f"job {i} item {k}", "max_tokens": 3} for k in range(3)]}
            try:
                r = httpx.post(gateway_url(s) + "/v1/jobs", json=body, timeout=30)
            except httpx.HTTPError:
                refused.append(-1)
                continue
            (accepted.append(r.json()["id"]) if r.status_code == 202 else refused.append(r.status_code))
            i += 1
            stop.wait(0.2)  # the producer's pace, not a wait for a condition

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        assert process.wait_for(lambda: len(accepted) >= 5, timeout=60) == "ok"
        kill(s, "kafka")
        at_kill = len(accepted)
        assert process.wait_for(lambda: len(refused) >= 2, timeout=60) == "ok"  # Kafka away: refused, said so
        restart(s, "kafka")
        assert process.wait_for(lambda: len(accepted) >= at_kill + 5, timeout=120) == "ok"
    finally:
        stop.set()
        producer.join(timeout=60)
    assert set(refused) <= {503, -1}, refused

    with Store.connect(s) as store:

        def unfinished() -> list[str]:
            done = {d["_id"]: d for d in store.db[JOBS].find({"_id": {"$in": accepted}})}
            counts: dict[str, int] = {}
            for r in store.db[JOBS].find({"kind": "result", "job_id": {"$in": accepted}}, {"job_id": 1}):
                counts[r["job_id"]] = counts.get(r["job_id"], 0) + 1
            return [j for j in accepted if counts.get(j, 0) < done[j]["total"]]

        assert process.wait_for(lambda: not unfinished(), timeout=300, interval=1) == "ok", unfinished()
        results = list(store.db[JOBS].find({"kind": "result", "job_id": {"$in": accepted}}))
        per_item = [(r["job_id"], r["item_id"]) for r in results]
        assert len(per_item) == len(set(per_item)) == 3 * len(accepted)  # every item answered, each once
        # Jobs Kafka refused are failed with the reason, never left queued for a worker that will not see them.
        stuck = store.db[JOBS].count_documents({"kind": "job", "model": s.model_name, "status": "queued",
                                                "_id": {"$nin": accepted}})  # fmt: skip
        assert stuck == 0
    assert all(httpx.get(gateway_url(s) + f"/v1/jobs/{j}", timeout=10).json()["status"] == "succeeded"
               for j in accepted[-3:])  # fmt: skip


def test_mongo_killed_while_a_job_runs_answers_each_item_once(tier: Settings) -> None:
    s = tier
    # One short item, then long ones of growing length: the kill falls after the first result and ~900
    # decode steps (seconds, even for the tiny model) before the next; the rest land one after another.
    items = [{"id": f"m{k}", "prompt": f"long answer {k}", "max_tokens": 4 if k == 0 else 930 + 8 * k}
             for k in range(12)]  # fmt: skip
    r = httpx.post(gateway_url(s) + "/v1/jobs", json={"items": items}, timeout=30)
    assert r.status_code == 202, r.text
    job = r.json()["id"]
    with Store.connect(s) as store:

        def results() -> list[dict[str, Any]]:
            return list(store.db[JOBS].find({"kind": "result", "job_id": job}))

        assert process.wait_for(lambda: len(results()) >= 1, timeout=120, interval=0.05) == "ok"
        before = len(results())
        kill(s, "mongo")  # mid-job: the worker's next result write fails
        restart(s, "mongo")
        assert process.wait_for(lambda: len(results()) >= 12, timeout=180, interval=0.5) == "ok", len(results())
        assert before < 12  # the kill fell while the job ran
        got = results()
        assert sorted(d["item_id"] for d in got) == sorted(it["id"] for it in items)  # each item, once
        assert all(d.get("text") is not None for d in got)
    assert httpx.get(gateway_url(s) + f"/v1/jobs/{job}", timeout=30).json()["status"] == "succeeded"


def test_mongo_killed_during_ingest_fails_the_attempt_and_the_retry_records_the_dataset_once(
    stack: Settings, tiny_llama_dir: Path, tmp_path: Path
) -> None:
    from plugins import pipeline

    tag = uuid.uuid4().hex[:8]
    rows = [{"instruction": f"ingest fault {tag} question {k}", "output": f"answer {k}"} for k in range(6000)]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    params = {"dataset_path": str(data), "base_model": str(tiny_llama_dir), "dataset_name": f"fault-{tag}"}
    outcome: list[BaseException | str] = []

    def ingesting() -> None:
        try:
            outcome.append(pipeline.ingest(params))  # the Airflow task's callable
        except BaseException as exc:  # noqa: BLE001 - asserted below
            outcome.append(exc)

    attempt = threading.Thread(target=ingesting)
    attempt.start()
    try:
        kill(stack, "mongo")
        assert attempt.is_alive(), "the ingest ended before MongoDB was killed"  # killed during the ingest
        attempt.join(timeout=120)
    finally:
        restart(stack, "mongo")
    assert len(outcome) == 1 and isinstance(outcome[0], PyMongoError), outcome  # the task fails, Airflow retries
    dataset_id = pipeline.ingest(params)  # the retry
    assert pipeline.ingest(params) == dataset_id  # and one more: nothing new
    with Store.connect(stack) as store:
        docs = list(store.db[DATASETS].find({"name": f"fault-{tag}"}))
    assert [d["_id"] for d in docs] == [dataset_id]
    assert docs[0]["train"] + docs[0]["eval"] == len(rows)  # every record, once
    folder = stack.datasets_dir / dataset_id
    lines = sum(len((folder / f).read_text().splitlines()) for f in ("train.jsonl", "eval.jsonl"))
    assert lines == len(rows)
    assert not [p for p in stack.datasets_dir.iterdir() if p.name.startswith(f".{dataset_id}.partial-")]


def test_mlflow_killed_during_training_and_mongo_and_mlflow_during_promotion_leave_one_champion_and_one_event(
    stack: Settings, tiny_llama_dir: Path, toy_dataset: Path, tmp_path: Path
) -> None:
    s = load_settings(model_name=f"faults-{uuid.uuid4().hex[:8]}")
    out = tmp_path / "a"
    cfg = TrainConfig(base_model=str(tiny_llama_dir), dataset=str(toy_dataset), max_steps=60, checkpoint_every=0,
                      micro_batch_size=16, dtype="float32", out_dir=str(out))  # fmt: skip

    # MLflow killed while the trainer runs: its metric flushes and the launcher's logging wait for the
    # restarted server; the run ends FINISHED with every step's metrics and its model.
    trained: list[Any] = []

    def training() -> None:
        with Store.connect(s) as own:
            trained.append(run_training(s, cfg, store=own, report=lambda m: None))

    trainer = threading.Thread(target=training)
    trainer.start()
    try:
        assert process.wait_for(lambda: (out / "metrics.jsonl").exists(), timeout=300, interval=0.05) == "ok"
        kill(s, "mlflow")
        assert not (out / "result.json").exists(), "the trainer ended before MLflow was killed"
    finally:
        restart(s, "mlflow")
    trainer.join(timeout=600)
    assert len(trained) == 1, "the training run failed"
    run = trained[0]
    mc = registry.client(s.mlflow_tracking_uri)
    assert mc.get_run(run.mlflow_run_id).info.status == "FINISHED"
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert sorted(m.step for m in mc.get_metric_history(run.mlflow_run_id, "loss")) == steps == list(range(1, 61))
    assert {a.path for a in mc.list_artifacts(run.mlflow_run_id)} >= {"metrics.jsonl", "result.json"}
    assert run.model_uri.startswith("models:/")  # the model logged after the restart
    with Store.connect(s) as store:
        evaluate(s, store, run.mlflow_run_id, limit=2, max_new_tokens=2)

    # MongoDB dies before the promotion: it fails, saying so; the alias has not moved, nothing was published.
    with Store.connect(s, timeout_ms=1500) as store:
        kill(s, "mongo")
        try:
            with pytest.raises(PyMongoError):
                promote(s, store, run.mlflow_run_id, margin=-1.0, report=lambda m: None)
        finally:
            restart(s, "mongo")
    assert registry.version_by_alias(mc, s.model_name, "champion") is None
    assert promoted_events(s) == []

    # MLflow is killed while the promotion waits at the alias (the test holds the alias lease, as a
    # concurrent promotion would, and lets go once MLflow is dead): the command fails saying the champion
    # did not move and publishes nothing; the promotion stays queued; re-run, it moves once, one event.
    outcome: list[BaseException | None] = []

    def promoting() -> None:
        with Store.connect(s) as own:
            try:
                promote(s, own, run.mlflow_run_id, margin=-1.0, report=lambda m: None)
                outcome.append(None)
            except BaseException as exc:  # noqa: BLE001 - asserted below
                outcome.append(exc)

    with Store.connect(s) as store:
        pending = {"model_name": s.model_name, "state": "pending"}
        os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"  # fail now, not after minutes of retries
        try:
            with lease.held(store, f"alias:{s.model_name}"):
                worker = threading.Thread(target=promoting)
                worker.start()
                # registered and queued in the outbox: its next step is the alias move, behind the lease
                queued = lambda: store.db[MODEL_CONFIGS].find_one(pending) is not None  # noqa: E731
                assert process.wait_for(queued, timeout=120) == "ok"
                kill(s, "mlflow")
            worker.join(timeout=120)
        finally:
            os.environ.pop("MLFLOW_HTTP_REQUEST_MAX_RETRIES", None)
            restart(s, "mlflow")
        assert len(outcome) == 1 and isinstance(outcome[0], PromotionError), outcome
        assert "champion NOT moved" in str(outcome[0])
        assert registry.version_by_alias(mc, s.model_name, "champion") is None
        assert promoted_events(s) == []  # nothing published for a move that did not happen
        outbox = store.db[MODEL_CONFIGS].find_one(pending)
        assert outbox is not None  # the promotion is queued, not lost
        done = promote(s, store, run.mlflow_run_id, margin=-1.0, report=lambda m: None)
        assert (done.alias, done.version, done.event_id) == ("champion", 1, outbox["event_id"])
        assert promote(s, store, run.mlflow_run_id, margin=-1.0, report=lambda m: None).already_done
    assert registry.version_by_alias(mc, s.model_name, "champion").version == "1"
    assert [e["event_id"] for e in promoted_events(s)] == [outbox["event_id"]]


def promoted_events(s: Settings) -> list[dict[str, Any]]:
    return read_topic(s, topics.MODEL_EVENTS, lambda m, v: v.get("type") == "ModelPromoted"
                      and v.get("model_name") == s.model_name)  # fmt: skip
