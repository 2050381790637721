"""The serving tier as users reach it: `lifecycle serve`'s gateway and two gRPC worker processes on the
tiny Llama, driven with the official openai client and plain HTTP; queued jobs through Kafka and Mongo;
a worker killed under load; the auth and rate limit of a gateway with API keys."""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lifecycle import events, topics
from lifecycle.events import publish_raw
from lifecycle.settings import Settings, load_settings
from lifecycle.stack import process
from lifecycle.stack.serving import gateway_url, start_serving
from lifecycle.store import INFERENCE_LOG, Store
from lifecycle.v1.events_pb2 import InferenceJobCompleted, InferenceJobQueued, ModelLoadFailed
from tests.kafka_read import read_topic

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def serving(stack: Settings, tiny_llama_dir: Path, start_serving: Any) -> Iterator[Settings]:
    with start_serving(tiny_llama_dir, 18100, "serve") as s:
        yield s


def url(s: Settings, path: str) -> str:
    return gateway_url(s) + path


def test_openai_client_gets_a_chat_completion_and_streams(serving: Settings) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=url(serving, "/v1"), api_key="unused")
    models = [m.id for m in client.models.list()]
    assert models == [serving.model_name]
    chat = client.chat.completions.create(
        model=serving.model_name, messages=[{"role": "user", "content": "Hello"}], max_tokens=8, temperature=0
    )
    assert chat.choices[0].finish_reason in ("stop", "length")
    assert chat.usage is not None and 0 < chat.usage.completion_tokens <= 8
    chunks = list(
        client.completions.create(
            model=serving.model_name, prompt="Once upon", max_tokens=8, temperature=0, stream=True
        )
    )
    streamed = "".join(c.choices[0].text for c in chunks)
    assert len(chunks) >= 2 and chunks[-1].choices[0].finish_reason in ("stop", "length")
    plain = client.completions.create(model=serving.model_name, prompt="Once upon", max_tokens=8, temperature=0)
    assert plain.choices[0].text == streamed  # greedy: the stream adds up to the plain answer
    chat_chunks = list(
        client.chat.completions.create(
            model=serving.model_name,
            messages=[{"role": "user", "content": "Hello"}],
            max_tokens=8,
            temperature=0,
            stream=True,
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chat_chunks) == chat.choices[0].message.content


BAD = [
    ("/v1/completions", {"prompt": "", "max_tokens": 4}, "prompt"),
    ("/v1/completions", {"prompt": "word " * 5000, "max_tokens": 4}, "prompt"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 0}, "max_tokens"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 100000}, "max_tokens"),
    ("/v1/chat/completions", {"messages": [], "max_tokens": 4}, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
    ("/v1/generate", {"prompt": "hi", "temperature": -1}, "temperature"),
    ("/v1/completions", {"prompt": "hi", "model": "../../etc/passwd"}, "model"),
    ("/v1/completions", {"prompt": "hi", "model": "/abs/path"}, "model"),
]


@pytest.mark.parametrize(("path", "body", "param"), BAD, ids=[f"{p}:{b}"[:60] for p, b, _ in BAD])
def test_bad_input_gets_a_4xx_naming_the_field_and_the_next_request_is_served(
    serving: Settings, path: str, body: dict[str, Any], param: str
) -> None:
    r = httpx.post(url(serving, path), json=body, timeout=60)
    assert 400 <= r.status_code < 500, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["message"] and err["type"]
    ok = httpx.post(url(serving, "/v1/generate"), json={"prompt": "hi", "max_tokens": 2}, timeout=60)
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] >= 1


def test_unknown_model_malformed_json_and_huge_body(serving: Settings) -> None:
    r = httpx.post(url(serving, "/v1/completions"), json={"prompt": "hi", "model": "nope"}, timeout=30)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = httpx.post(url(serving, "/v1/chat/completions"), content=b'{"messages": [', timeout=30)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = httpx.post(url(serving, "/v1/completions"), content=b"x" * (10 << 20), timeout=60)
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"


def test_inference_log_and_metrics(serving: Settings) -> None:
    marker = f"log me {uuid.uuid4().hex[:8]}"
    r = httpx.post(url(serving, "/v1/generate"), json={"prompt": marker, "max_tokens": 3}, timeout=60)
    assert r.status_code == 200
    with Store.connect(serving) as store:
        found = process.wait_for(lambda: store.db[INFERENCE_LOG].find_one({"prompt": marker}) is not None, timeout=30)
        doc = store.db[INFERENCE_LOG].find_one({"prompt": marker})
    assert found == "ok" and doc is not None
    assert doc["version"] == "local" and doc["completion_tokens"] == r.json()["usage"]["completion_tokens"]
    text = httpx.get(url(serving, "/metrics"), timeout=10).text
    for name in (
        "lifecycle_gateway_time_to_first_token_seconds_bucket",
        "lifecycle_worker_queue_depth",
        "lifecycle_worker_served_version",
        "lifecycle_inference_log_dropped_total",
    ):
        assert name in text
    # the workers' own figures: /metrics asks them first, so the answer just given is in them at once
    used = r.json()["usage"]

    def total(name: str) -> float:
        lines = httpx.get(url(serving, "/metrics"), timeout=10).text.splitlines()
        return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(name + "{"))

    assert total("lifecycle_worker_completion_tokens_total") >= used["completion_tokens"]
    assert total("lifecycle_worker_prompt_tokens_total") >= used["prompt_tokens"] > 0
    assert total("lifecycle_worker_decode_passes_total") > 0 and total("lifecycle_worker_decode_seconds_total") > 0
    assert total("lifecycle_worker_prefill_passes_total") > 0 and total("lifecycle_worker_prefill_seconds_total") > 0
    assert total("lifecycle_worker_decode_rows_total") >= total("lifecycle_worker_decode_passes_total")
    assert total("lifecycle_worker_kv_rows") > 0 and total("lifecycle_worker_adapters") >= 2  # two workers
    assert metric(serving, "lifecycle_gateway_prompt_tokens_total") >= used["prompt_tokens"]
    info = [line for line in httpx.get(url(serving, "/metrics"), timeout=10).text.splitlines()
            if line.startswith("lifecycle_model_info{") and 'serving="1"' in line]  # fmt: skip
    assert len(info) == 2 and all('version="local"' in line and 'digest="' in line for line in info), info


def test_a_queued_job_is_answered_through_kafka(serving: Settings) -> None:
    items = [{"id": f"q{i}", "prompt": f"question {i}", "max_tokens": 4} for i in range(5)]
    r = httpx.post(url(serving, "/v1/jobs"), json={"items": items}, timeout=30)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]

    def done() -> bool:
        return httpx.get(url(serving, f"/v1/jobs/{job_id}"), timeout=10).json()["status"] == "succeeded"

    assert process.wait_for(done, timeout=120) == "ok"
    job = httpx.get(url(serving, f"/v1/jobs/{job_id}"), timeout=10).json()
    assert sorted(x["item_id"] for x in job["results"]) == [f"q{i}" for i in range(5)]
    assert all(x["text"] is not None and x["usage"]["completion_tokens"] >= 1 for x in job["results"])
    assert httpx.get(url(serving, "/v1/jobs/job-nope"), timeout=10).status_code == 404

    # Both topics carry events of proto/ (proto3 JSON): the queued job and, once whole, its results.
    def of_job(topic: str) -> list[dict]:
        return read_topic(serving, topic, lambda m, _v: m.key() == job_id.encode())

    # (the results are published right after the last one is stored, so the event may trail the view)
    assert process.wait_for(lambda: len(of_job(topics.INFERENCE_RESULTS)) == 1, timeout=30) == "ok"
    queued, results = of_job(topics.INFERENCE_REQUESTS), of_job(topics.INFERENCE_RESULTS)
    assert len(queued) == 1 and len(results) == 1
    request_event, result_event = events.decode(queued[0]), events.decode(results[0])
    assert isinstance(request_event, InferenceJobQueued) and [i.max_tokens for i in request_event.items] == [4] * 5
    assert isinstance(result_event, InferenceJobCompleted) and result_event.status == "succeeded"
    by_item = {r.item_id: r for r in result_event.results}
    assert sorted(by_item) == [f"q{i}" for i in range(5)]
    assert all(by_item[x["item_id"]].text == x["text"] for x in job["results"])
    assert all(r.usage.completion_tokens >= 1 and r.worker for r in result_event.results)


def test_a_job_message_that_is_not_a_queued_job_is_skipped_and_the_next_one_answered(serving: Settings) -> None:
    for bad in (b"not json", b'{"job_id": "job-old-format", "items": []}', events.encode(events.new_event(
        ModelLoadFailed, model_name="m", version=1, error="x"))):  # fmt: skip
        publish_raw(serving, topics.INFERENCE_REQUESTS, "job-bad", bad)
    r = httpx.post(url(serving, "/v1/jobs"), json={"items": [{"prompt": "still there?", "max_tokens": 2}]}, timeout=30)
    job_id = r.json()["id"]

    def done() -> bool:
        return httpx.get(url(serving, f"/v1/jobs/{job_id}"), timeout=10).json()["status"] == "succeeded"

    assert process.wait_for(done, timeout=120) == "ok"


def metric(s: Settings, sample: str) -> float:
    """The value of one sample (name and labels as /metrics prints them), 0 when absent."""
    for line in httpx.get(url(s, "/metrics"), timeout=10).text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_kill_9_of_a_worker_mid_generation_fails_no_request_and_it_comes_back(
    serving: Settings, tiny_llama_dir: Path
) -> None:
    def ask(i: int) -> int:
        body = {"prompt": f"tell me a long story {i}", "max_tokens": 1024}
        return httpx.post(url(serving, "/v1/generate"), json=body, timeout=300).status_code

    def job(i: int) -> str:
        body = {"items": [{"prompt": f"after the kill {i}", "max_tokens": 2}]}
        return str(httpx.post(url(serving, "/v1/jobs"), json=body, timeout=30).json()["id"])

    victim = serving.run_dir / f"worker-{serving.worker_port + 1}.pid"
    pid = process.read_pid(victim)
    assert pid is not None
    first_tokens = 'lifecycle_gateway_time_to_first_token_seconds_count{route="/v1/generate"}'
    mid = 'lifecycle_gateway_worker_retries_total{when="mid_generation"}'
    before, mid_before = metric(serving, first_tokens), metric(serving, mid)
    with cf.ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(ask, i) for i in range(16)]

        # Kill once every request has its first token while the victim still has requests in flight:
        # those are mid-generation. (1024 tokens take seconds, far longer than the requests' first
        # tokens are spread apart, even on a loaded machine; at 256 the victim had once finished them all.)
        def victim_mid_generation() -> bool:
            ws = httpx.get(url(serving, "/readyz"), timeout=10).json()["workers"]
            in_flight = [w["outstanding"] for w in ws if w["address"].endswith(f":{serving.worker_port + 1}")]
            return metric(serving, first_tokens) - before >= 16 and in_flight[0] >= 1

        assert process.wait_for(victim_mid_generation, timeout=120) == "ok"
        os.killpg(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        # Queued jobs keyed to the dead worker's partitions go to the survivor once the group drops the
        # dead member (session timeout 10 s; with Kafka's default 45 s they waited that long).
        jobs = [job(i) for i in range(12)]

        def jobs_done() -> bool:
            return all(
                httpx.get(url(serving, f"/v1/jobs/{j}"), timeout=10).json()["status"] == "succeeded" for j in jobs
            )

        assert process.wait_for(jobs_done, timeout=120) == "ok"
        after_kill = time.monotonic() - killed_at
        codes = [f.result() for f in futures]
    # Not streamed, so nothing had reached the clients: the victim's requests start over on the other
    # worker and every request succeeds.
    assert codes == [200] * 16, codes
    assert metric(serving, mid) - mid_before >= 1
    print(f"12 jobs queued at the kill answered {after_kill:.1f} s after it")
    assert after_kill < 30, after_kill

    def worker_up(up: bool) -> bool:
        ws = httpx.get(url(serving, "/readyz"), timeout=10).json()["workers"]
        return [w["up"] for w in ws] == [True, up]

    assert process.wait_for(lambda: worker_up(False), timeout=30) == "ok"

    t0 = time.monotonic()
    start_serving(serving, 2, str(tiny_llama_dir), threads=1, report=print)
    assert process.wait_for(lambda: worker_up(True), timeout=60) == "ok"
    print(f"restarted worker serving again in {time.monotonic() - t0:.1f} s")


def test_api_keys_and_rate_limit(serving: Settings) -> None:
    from fastapi.testclient import TestClient

    from serving.gateway.app import create_app

    s = load_settings(api_keys=["k-secret"], rate_limit_per_minute=3)
    workers = [f"{s.host}:{serving.worker_port}"]
    with TestClient(create_app(s, workers, log_inference=False)) as client:
        assert client.get("/healthz").status_code == 200
        r = client.get("/v1/models")
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert client.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        auth = {"Authorization": "Bearer k-secret"}
        assert [client.get("/v1/models", headers=auth).status_code for _ in range(3)] == [200, 200, 200]
        r = client.get("/v1/models", headers=auth)
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        assert json.loads(r.text)["error"]["type"] == "rate_limit_error"


def test_a_dns_address_stands_for_every_worker_it_resolves_to(serving: Settings) -> None:
    from fastapi.testclient import TestClient

    from serving.gateway.app import create_app

    s = load_settings(rate_limit_per_minute=0)
    # What a headless Service looks like to the gateway: one name, every pod's IP behind it.
    with TestClient(create_app(s, [f"dns:///localhost:{serving.worker_port}"], log_inference=False)) as client:
        workers = client.get("/readyz").json()["workers"]
        assert [(w["address"], w["up"]) for w in workers] == [(f"127.0.0.1:{serving.worker_port}", True)]
        r = client.post("/v1/generate", json={"prompt": "hi", "max_tokens": 2})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1


def test_a_client_that_goes_away_stops_its_generation_that_is_not_streamed(serving: Settings) -> None:
    marker = f"gone {uuid.uuid4().hex[:8]}"
    t0 = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):  # the client stops waiting and closes its connection
        httpx.post(url(serving, "/v1/generate"), json={"prompt": marker, "max_tokens": 1024},
                   timeout=httpx.Timeout(30, read=0.5))  # fmt: skip
    with Store.connect(serving) as store:
        found = process.wait_for(lambda: store.db[INFERENCE_LOG].find_one({"prompt": marker}) is not None, timeout=60)
        doc = store.db[INFERENCE_LOG].find_one({"prompt": marker})
    assert found == "ok" and doc is not None
    # Logged when the generation ended: cancelled, not run to its 1,024 tokens for nobody.
    assert doc["finish_reason"] == "cancelled", (doc["finish_reason"], doc["latency_ms"], time.monotonic() - t0)
    r = httpx.post(url(serving, "/v1/generate"), json={"prompt": "still here?", "max_tokens": 3}, timeout=60)
    assert r.status_code == 200
