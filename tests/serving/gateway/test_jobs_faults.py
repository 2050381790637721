"""Queued jobs when a service behind the gateway is away: an answer that says which (503), never a
500, and no job left ``queued`` that no worker will ever see."""

from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient

from lifecycle.settings import Settings, load_settings
from lifecycle.store import JOBS, Store
from serving.gateway.app import create_app
from tests.serving.gateway.test_app import ScriptedPool

pytestmark = pytest.mark.stack
JOB = {"items": [{"id": "1", "prompt": "hi", "max_tokens": 2}]}


def test_kafka_away_fails_the_job_it_could_not_queue(stack: Settings) -> None:
    model = f"jobs-fault-{uuid.uuid4().hex[:8]}"
    settings = load_settings(kafka_bootstrap="127.0.0.1:1")  # nothing listens there
    with TestClient(create_app(settings, [], log_inference=False, pool=ScriptedPool(model=model))) as client:
        r = client.post("/v1/jobs", json=JOB)
    assert r.status_code == 503 and "Kafka" in r.json()["error"]["message"], r.text
    with Store.connect(stack) as store:
        jobs = list(store.db[JOBS].find({"kind": "job", "model": model}))
    assert [(j["status"], j["error"].startswith("not queued: ")) for j in jobs] == [("failed", True)]


def test_mongo_away_is_a_503_on_create_and_read(stack: Settings) -> None:
    settings = load_settings(mongo_uri="mongodb://127.0.0.1:1/")
    with TestClient(create_app(settings, [], log_inference=False, pool=ScriptedPool())) as client:
        created = client.post("/v1/jobs", json=JOB)
        read = client.get("/v1/jobs/job-0123456789abcdef")
    for r in (created, read):
        assert r.status_code == 503 and "MongoDB" in r.json()["error"]["message"], r.text
