"""The gateway on its own, against an in-process pool that stands in for the gRPC workers: API keys and
the rate limit, the error body of every kind of bad input, which model a request names, how each
transport error of the pool is answered, the shapes of whole and streamed answers, and the OpenAPI
document. The same app against real worker processes is tested in ``test_gateway.py``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from lifecycle.settings import Settings
from lifecycle.v1 import inference_pb2
from serving.gateway.app import create_app
from serving.gateway.pool import (
    NoWorkerError,
    PoolError,
    RequestRejectedError,
    WorkerFailedError,
    WorkerHandle,
    WorkerPool,
    WorkersBusyError,
)


class ScriptedPool(WorkerPool):
    """Workers that are up and answer from a script: the words of ``reply``, or ``error`` raised."""

    def __init__(self, model: str = "m", version: str = "3") -> None:
        super().__init__([])
        w = WorkerHandle("fake:1", None, None, up=True, model=model, version=version, name="fake-1")  # type: ignore[arg-type]
        self.workers = [w]
        self.reply = "hello there"
        self.error: PoolError | None = None
        self.requests: list[inference_pb2.GenerateRequest] = []

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def generate(  # type: ignore[override]
        self, request: inference_pb2.GenerateRequest, restartable: bool = False, on_first: Any = None
    ) -> AsyncIterator[tuple[WorkerHandle, inference_pb2.GenerateResponse]]:
        self.requests.append(request)
        if self.error is not None:
            raise self.error
        words = self.reply.split(" ")
        for i, word in enumerate(words):
            last = i == len(words) - 1
            yield self.workers[0], inference_pb2.GenerateResponse(
                text=word if i == 0 else " " + word, finish_reason="stop" if last else "", model=request.model,
                version=self.workers[0].version,
                usage=inference_pb2.Usage(prompt_tokens=5, completion_tokens=i + 1),
            )  # fmt: skip


@pytest.fixture
def pool() -> ScriptedPool:
    return ScriptedPool()


def client_of(pool: ScriptedPool, **settings: Any) -> Iterator[TestClient]:
    app = create_app(Settings(**settings), [], log_inference=False, pool=pool)
    with TestClient(app) as client:
        yield client


@pytest.fixture
def client(pool: ScriptedPool) -> Iterator[TestClient]:
    yield from client_of(pool)


def error(r: Any) -> dict[str, Any]:
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return dict(body["error"])


def test_a_key_is_needed_everywhere_but_the_probes_and_each_key_has_its_own_bucket(pool: ScriptedPool) -> None:
    for client in client_of(pool, api_keys=["k1", "k2"], rate_limit_per_minute=2):
        assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200
        for path in ("/v1/models", "/metrics"):
            r = client.get(path)
            assert r.status_code == 401 and error(r)["code"] == "invalid_api_key"
        assert client.get("/v1/models", headers={"Authorization": "Bearer k3"}).status_code == 401
        assert client.get("/v1/models", headers={"Authorization": "k1"}).status_code == 401  # no "Bearer"
        k1, k2 = ({"Authorization": f"Bearer {k}"} for k in ("k1", "k2"))
        assert [client.get("/v1/models", headers=k1).status_code for _ in range(2)] == [200, 200]
        r = client.get("/v1/models", headers=k1)
        assert r.status_code == 429 and error(r)["type"] == "rate_limit_error" and int(r.headers["Retry-After"]) >= 1
        assert client.get("/v1/models", headers=k2).status_code == 200


def test_without_keys_nothing_is_refused_for_auth_or_rate(client: TestClient) -> None:
    assert [client.get("/v1/models").status_code for _ in range(5)] == [200] * 5


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", {"messages": []}, "messages"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens"),
        ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": " "}]}, "messages"),
        ("/v1/completions", {"prompt": ["a", "b"]}, "prompt"),
        ("/v1/completions", {"prompt": "a", "temperature": 3}, "temperature"),
        ("/v1/generate", {"prompt": "hi", "max_tokens": 5000}, "max_tokens"),
        ("/v1/generate", {"prompt": "hi", "surprise": 1}, "surprise"),
        ("/v1/generate", {"prompt": "  "}, "prompt"),
        ("/v1/generate", {"prompt": "hi", "model": "../etc"}, "model"),
        ("/v1/jobs", {"items": [{"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"}]}, "items"),
        ("/v1/jobs", {"items": [{"max_tokens": 3}]}, "items.0"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(client: TestClient, path: str, body: Any, param: str) -> None:
    r = client.post(path, json=body)
    assert r.status_code == 400, r.text
    assert error(r)["param"] == param and error(r)["type"] == "invalid_request_error"


def test_bad_json_and_big_bodies_are_refused_before_any_worker_is_asked(client: TestClient, pool: ScriptedPool) -> None:
    r = client.post("/v1/generate", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in error(r)["message"]
    r = client.post("/v1/generate", content=b"x" * ((1 << 20) + 1), headers={"content-type": "application/json"})
    assert r.status_code == 413 and error(r)["code"] == "body_too_large"
    assert client.get("/v1/nothing").status_code == 404 and client.delete("/v1/models").status_code == 405
    assert pool.requests == []


def test_a_request_names_the_served_model_or_none(client: TestClient, pool: ScriptedPool) -> None:
    r = client.post("/v1/generate", json={"prompt": "hi", "model": "other"})
    assert r.status_code == 404 and error(r)["code"] == "model_not_found" and "served: m" in error(r)["message"]
    assert client.post("/v1/generate", json={"prompt": "hi"}).json()["model"] == "m"
    pool.workers[0].up = False
    r = client.post("/v1/generate", json={"prompt": "hi"})
    assert r.status_code == 503 and r.headers["Retry-After"] == "2"
    assert client.get("/readyz").status_code == 503


@pytest.mark.parametrize(
    ("raised", "status", "param"),
    [
        (RequestRejectedError("prompt is 9000 tokens; the model's context is 8192", param="prompt"), 400, "prompt"),
        (RequestRejectedError("model 'm' is not served here", param="model", not_found=True), 404, "model"),
        (WorkersBusyError("all workers are busy; retry shortly"), 429, None),
        (NoWorkerError("no inference worker is serving the model right now"), 503, None),
        (WorkerFailedError("worker w failed mid-stream: boom"), 502, None),
    ],
)
def test_each_pool_error_has_its_own_answer(
    client: TestClient, pool: ScriptedPool, raised: PoolError, status: int, param: str | None
) -> None:
    pool.error = raised
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == status and error(r)["param"] == param and error(r)["message"] == str(raised)


def test_the_worker_request_carries_every_sampling_field(client: TestClient, pool: ScriptedPool) -> None:
    body = {"prompt": "hi", "max_tokens": 7, "temperature": 0.5, "top_p": 0.9, "stop": ["x"], "seed": 42}
    client.post("/v1/generate", json=body)
    client.post("/v1/chat/completions", json={"messages": [{"role": "developer", "content": "be brief"}]})
    client.post("/v1/completions", json={"prompt": "once"})
    gen, chat, completion = pool.requests
    assert (gen.max_tokens, gen.temperature, list(gen.stop), gen.seed) == (7, 0.5, ["x"], 42)
    assert gen.top_p == pytest.approx(0.9)  # a float32 on the wire
    assert [(m.role, m.content) for m in chat.messages] == [("system", "be brief")] and chat.max_tokens == 256
    assert completion.prompt == "once" and completion.max_tokens == 16


def test_whole_answers_have_the_openai_shapes(client: TestClient) -> None:
    chat = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}).json()
    assert chat["object"] == "chat.completion" and chat["system_fingerprint"] == "v3"
    assert chat["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "hello there"},
            "finish_reason": "stop",
            "logprobs": None,
        }
    ]
    assert chat["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    reply = client.post("/v1/generate", json={"prompt": "hi"})
    gen = reply.json()
    assert gen.pop("id").startswith("gen-") and reply.headers["x-lifecycle-response-id"] == reply.json()["id"]
    assert gen == {"text": "hello there", "model": "m", "version": "3", "digest": "", "finish_reason": "stop",
                   "usage": chat["usage"]}  # fmt: skip
    assert reply.headers["x-lifecycle-model-version"] == "3" and chat["model_version"] == "3"
    text = client.post("/v1/completions", json={"prompt": "hi"}).json()
    assert text["object"] == "text_completion" and text["choices"][0]["text"] == "hello there"


def test_a_stream_is_chunks_then_done_with_usage_only_at_the_end(client: TestClient) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "stream": True}
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line.removeprefix("data: ") for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks) == "hello there"
    assert [("usage" in c, c["choices"][0]["finish_reason"]) for c in chunks] == [(False, None), (True, "stop")]


def test_a_stream_that_fails_after_its_first_token_ends_with_an_error_event(pool: ScriptedPool) -> None:
    class FailingLate(ScriptedPool):
        async def generate(self, request: Any, restartable: bool = False, on_first: Any = None) -> Any:  # type: ignore[override]
            yield self.workers[0], inference_pb2.GenerateResponse(text="par", model="m", version="3")
            raise WorkerFailedError("worker fake-1 failed mid-stream: gone")

    for client in client_of(FailingLate()):
        with client.stream("POST", "/v1/completions", json={"prompt": "hi", "stream": True}) as r:
            events = [line.removeprefix("data: ") for line in r.iter_lines() if line.startswith("data: ")]
    assert json.loads(events[0])["choices"][0]["text"] == "par"
    assert json.loads(events[1])["error"]["code"] == "worker_failed" and events[2] == "[DONE]"


def test_the_openapi_document_types_answers_and_errors(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    ok = spec["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert ok["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/ChatCompletion")
    assert ok["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    assert "text/event-stream" in ok["200"]["content"]
    body = spec["paths"]["/v1/generate"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["$ref"].endswith("/GenerateRequest")
    limits = spec["components"]["schemas"]["GenerateRequest"]["properties"]["max_tokens"]
    assert limits["maximum"] == 1024 and limits["minimum"] == 1


@pytest.mark.parametrize(
    ("path", "raw", "param"),
    [
        ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "hi \\ud800"}]}', "messages.0.content"),
        ("/v1/completions", '{"prompt": "\\udfff"}', "prompt"),
        ("/v1/generate", '{"prompt": "ok", "stop": ["\\ud83d"]}', "stop.0"),
        ("/v1/jobs", '{"items": [{"prompt": "a"}, {"prompt": "\\ud800"}]}', "items.1.prompt"),
    ],
)
def test_a_lone_surrogate_is_a_400_naming_the_field_not_a_500(
    client: TestClient, pool: ScriptedPool, path: str, raw: str, param: str
) -> None:
    r = client.post(path, content=raw.encode(), headers={"content-type": "application/json"})
    assert r.status_code == 400 and error(r)["param"] == param and "surrogate" in error(r)["message"], r.text
    assert pool.requests == []
    ok = client.post(
        "/v1/generate", content=b'{"prompt": "\\ud83d\\ude00"}', headers={"content-type": "application/json"}
    )
    assert ok.status_code == 200  # a surrogate pair is a character (here an emoji), not an error


def test_readiness_lists_the_workers_only_to_a_caller_with_a_key(pool: ScriptedPool) -> None:
    for client in client_of(pool, api_keys=["k1"]):
        assert client.get("/readyz").json() == {"ready": True}
        listed = client.get("/readyz", headers={"Authorization": "Bearer k1"}).json()["workers"]
        assert [(w["address"], w["version"]) for w in listed] == [("fake:1", "3")]
        pool.workers[0].up = False
        r = client.get("/readyz")
        assert (r.status_code, r.json()) == (503, {"ready": False})
    for client in client_of(pool):
        assert client.get("/readyz").json()["workers"][0]["address"] == "fake:1"  # no keys: nothing to hide
