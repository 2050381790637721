"""The REST gateway: ``POST /v1/generate``, OpenAI-compatible ``/v1/chat/completions``,
``/v1/completions`` (``stream: true`` -> SSE) and ``/v1/models``, queued ``/v1/jobs``, and
``/healthz``, ``/readyz``, ``/metrics``. Requests go to the gRPC workers of a ``WorkerPool``.

    uvicorn --factory serving.gateway.app:app_from_env     # usually started by `lifecycle serve`
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError

from lifecycle.names import is_valid_model_name
from lifecycle.settings import Settings
from lifecycle.v1 import inference_pb2
from serving.gateway.inference_log import InferenceLog
from serving.gateway.metrics import Metrics
from serving.gateway.pool import WorkerPool
from serving.gateway.protocol import (
    MAX_TOKENS_LIMIT,
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    GenerateRequest,
    JobRequest,
)
from serving.gateway.ratelimit import RateLimiter

MAX_BODY = 1 << 20  # 1 MiB: prompts are bounded by the context anyway
OPEN_PATHS = {"/healthz", "/readyz"}


def create_app(settings: Settings, worker_addresses: list[str], *, log_inference: bool = True) -> FastAPI:
    pool = WorkerPool(worker_addresses)
    metrics = Metrics()
    pool.on_retry = lambda when: metrics.retries.labels(when).inc()
    inference_log = InferenceLog(settings, metrics) if log_inference else None
    limiter = RateLimiter(settings.rate_limit_per_minute)
    keys = {hashlib.sha256(k.encode()).hexdigest()[:12]: k for k in settings.api_keys}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await pool.start()
        if inference_log:
            inference_log.start()
        yield
        await pool.close()
        if inference_log:
            inference_log.stop()

    app = FastAPI(title="llm-lifecycle gateway", version="1", lifespan=lifespan)
    _document_bodies(app)
    app.state.pool, app.state.metrics, app.state.inference_log = pool, metrics, inference_log

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(ValidationError)
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError | ValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", []) if p != "body"]
        param = ".".join(loc) or None
        msg = first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":
            msg, param = f"request body is not valid JSON: {first.get('ctx', {}).get('error', msg)}", None
        err = APIError(400, f"{param}: {msg}" if param else msg, param=param)
        return JSONResponse(err.body(), status_code=400)

    @app.exception_handler(404)
    async def _not_found(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(APIError(404, f"no route {request.url.path}", code="not_found").body(), status_code=404)

    @app.exception_handler(405)
    async def _not_allowed(request: Request, exc: Exception) -> JSONResponse:
        err = APIError(405, f"{request.method} is not allowed on {request.url.path}", code="method_not_allowed")
        return JSONResponse(err.body(), status_code=405)

    @app.middleware("http")
    async def _guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        """Body size, API key and rate limit, before any route runs; request metrics after."""
        t0 = time.monotonic()
        try:
            size = int(request.headers.get("content-length") or 0)
        except ValueError:
            size = 0
        if size > MAX_BODY:
            err = APIError(413, f"request body is {size} bytes; the limit is {MAX_BODY}", code="body_too_large")
            return JSONResponse(err.body(), status_code=413)
        key_id = ""
        if keys and request.url.path not in OPEN_PATHS:
            auth = request.headers.get("authorization", "")
            token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
            key_id = hashlib.sha256(token.encode()).hexdigest()[:12]
            if not token or keys.get(key_id) != token:
                err = APIError(
                    401,
                    "missing or invalid API key (Authorization: Bearer <key>)",
                    type="authentication_error",
                    code="invalid_api_key",
                )
                return JSONResponse(err.body(), status_code=401)
            wait = limiter.take(key_id)
            if wait > 0:
                err = APIError(
                    429, "rate limit reached for this API key", type="rate_limit_error", code="rate_limit_exceeded"
                )
                return JSONResponse(err.body(), status_code=429, headers={"Retry-After": str(int(wait) + 1)})
        request.state.key_id = key_id
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "other")
        metrics.requests.labels(path, str(response.status_code)).inc()
        metrics.latency.labels(path).observe(time.monotonic() - t0)
        return response

    async def _body(request: Request) -> Any:
        raw = b""
        async for chunk in request.stream():  # a chunked body has no content-length to check up front
            raw += chunk
            if len(raw) > MAX_BODY:
                raise APIError(413, f"request body is over the limit of {MAX_BODY} bytes", code="body_too_large")
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise APIError(400, f"request body is not valid JSON: {exc}") from None

    def _model(name: str | None) -> str:
        served = pool.models()
        if name is not None and not is_valid_model_name(name):
            raise APIError(400, f"model name {name!r} is not allowed", param="model", code="invalid_model")
        if not served:
            raise APIError(
                503,
                "no inference worker is serving a model right now",
                type="server_error",
                code="unavailable",
                headers={"Retry-After": "2"},
            )
        if name is None:
            return next(iter(served))
        if name not in served:
            raise APIError(
                404,
                f"model {name!r} does not exist; served: {', '.join(served)}",
                param="model",
                code="model_not_found",
            )
        return name

    def _max_tokens(value: int | None, default: int) -> int:
        n = default if value is None else value
        if n < 1 or n > MAX_TOKENS_LIMIT:
            raise APIError(400, f"max_tokens must be between 1 and {MAX_TOKENS_LIMIT}, got {n}", param="max_tokens")
        return n

    async def _run(
        grpc_req: inference_pb2.GenerateRequest,
        request: Request,
        route: str,
        logged: dict[str, Any],
        stream: bool,
    ) -> AsyncIterator[tuple[str, inference_pb2.GenerateResponse]]:
        """Yield (worker, response) for one completion; metrics and the inference log on the way.
        A completion that is not streamed starts over on another worker if its worker dies mid-way."""
        t0 = time.monotonic()
        text: list[str] = []
        worker, last = "", None

        def first_token() -> None:
            metrics.ttft.labels(route).observe(time.monotonic() - t0)

        try:
            async for w, resp in pool.generate(grpc_req, restartable=not stream, on_first=first_token):
                worker, last = w.name, resp
                text.append(resp.text)
                yield w.name, resp
        finally:
            if last is not None:
                elapsed = time.monotonic() - t0
                metrics.tokens.inc(last.usage.completion_tokens)
                if inference_log:
                    inference_log.add(
                        {
                            **logged,
                            "route": route,
                            "model": last.model,
                            "version": last.version,
                            "worker": worker,
                            "output": "".join(text),
                            "finish_reason": last.finish_reason or "cancelled",
                            "latency_ms": round(elapsed * 1000, 1),
                            "prompt_tokens": last.usage.prompt_tokens,
                            "completion_tokens": last.usage.completion_tokens,
                            "api_key_id": getattr(request.state, "key_id", ""),
                        }
                    )

    async def _collect(gen: AsyncIterator[tuple[str, inference_pb2.GenerateResponse]]) -> tuple[str, Any]:
        parts, last = [], None
        async for _, resp in gen:
            parts.append(resp.text)
            last = resp
        return "".join(parts), last

    async def _sse(
        gen: AsyncIterator[tuple[str, inference_pb2.GenerateResponse]],
        chunk: Callable[[inference_pb2.GenerateResponse], dict[str, Any]],
    ) -> StreamingResponse:
        """Start the stream before answering, so an error before the first token is a plain 4xx."""
        it = gen.__aiter__()
        try:
            first = await it.__anext__()
        except StopAsyncIteration:
            first = None

        async def events() -> AsyncIterator[bytes]:
            try:
                if first is not None:
                    yield f"data: {json.dumps(chunk(first[1]))}\n\n".encode()
                async for _, resp in it:
                    yield f"data: {json.dumps(chunk(resp))}\n\n".encode()
            except APIError as exc:
                yield f"data: {json.dumps(exc.body())}\n\n".encode()
            finally:
                await it.aclose()  # type: ignore[attr-defined]
            yield b"data: [DONE]\n\n"

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )

    def _request(body: Any, model: str, max_tokens: int, **text: Any) -> inference_pb2.GenerateRequest:
        """The worker request of an OpenAI-style body: its sampling fields, and the prompt or messages."""
        return inference_pb2.GenerateRequest(
            request_id=uuid.uuid4().hex, max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p,
            stop=body.stops(), seed=body.seed or 0, model=model, **text,
        )  # fmt: skip

    def _usage(resp: Any) -> dict[str, int]:
        p, c = (resp.usage.prompt_tokens, resp.usage.completion_tokens) if resp else (0, 0)
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    # -- routes --------------------------------------------------------------------------------
    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        ready = [w for w in pool.workers if w.up]
        body = {
            "ready": bool(ready),
            "workers": [
                {
                    "address": w.address,
                    "up": w.up,
                    "model": w.model,
                    "version": w.version,
                    "outstanding": w.outstanding,
                    "queued": w.queued,
                }
                for w in pool.workers
            ],
        }
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics")
    async def metrics_route() -> Response:
        metrics.observe_pool(pool)
        return PlainTextResponse(generate_latest(metrics.registry).decode(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        data = [
            {
                "id": name,
                "object": "model",
                "created": 0,
                "owned_by": "llm-lifecycle",
                "versions": sorted({w.version for w in ws}),
            }
            for name, ws in pool.models().items()
        ]
        return {"object": "list", "data": data}

    @app.post("/v1/generate", openapi_extra=_body_doc(GenerateRequest))
    async def generate(request: Request) -> dict[str, Any]:
        body = GenerateRequest.model_validate(await _body(request))
        model = _model(body.model)
        if not body.prompt.strip():
            raise APIError(400, "prompt is empty", param="prompt")
        req = inference_pb2.GenerateRequest(
            request_id=uuid.uuid4().hex,
            messages=[inference_pb2.ChatMessage(role="user", content=body.prompt)],
            max_tokens=_max_tokens(body.max_tokens, 64),
            temperature=body.temperature,
            top_p=body.top_p,
            stop=body.stop,
            model=model,
        )
        text, last = await _collect(_run(req, request, "/v1/generate", {"prompt": body.prompt}, stream=False))
        return {
            "text": text,
            "model": model,
            "version": last.version if last else "",
            "finish_reason": last.finish_reason if last else "",
            "usage": _usage(last),
        }

    @app.post("/v1/chat/completions", response_model=None, openapi_extra=_body_doc(ChatCompletionRequest))
    async def chat(request: Request) -> dict[str, Any] | StreamingResponse:
        body = ChatCompletionRequest.model_validate(await _body(request))
        model = _model(body.model)
        messages = [inference_pb2.ChatMessage(role=m.worker_role, content=m.text()) for m in body.messages]
        if not any(m.content.strip() for m in messages):
            raise APIError(400, "messages: every message is empty", param="messages")
        req = _request(body, model, _max_tokens(body.max_completion_tokens or body.max_tokens, 256), messages=messages)
        cid, created = f"chatcmpl-{req.request_id}", int(time.time())
        logged = {"messages": [m.model_dump() for m in body.messages]}
        gen = _run(req, request, "/v1/chat/completions", logged, stream=bool(body.stream))
        if body.stream:

            def chunk(r: inference_pb2.GenerateResponse) -> dict[str, Any]:
                out = {
                    "id": cid,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "system_fingerprint": f"v{r.version}",
                    "choices": [
                        {
                            "index": 0,
                            "delta": {"role": "assistant", "content": r.text},
                            "finish_reason": r.finish_reason or None,
                        }
                    ],
                }
                if r.finish_reason:
                    out["usage"] = _usage(r)
                return out

            return await _sse(gen, chunk)
        text, last = await _collect(gen)
        return {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "system_fingerprint": f"v{last.version}" if last else None,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": last.finish_reason if last else "stop",
                    "logprobs": None,
                }
            ],
            "usage": _usage(last),
        }

    @app.post("/v1/completions", response_model=None, openapi_extra=_body_doc(CompletionRequest))
    async def completions(request: Request) -> dict[str, Any] | StreamingResponse:
        body = CompletionRequest.model_validate(await _body(request))
        model = _model(body.model)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(prompts) != 1:
            raise APIError(400, "prompt: exactly one prompt per request", param="prompt")
        if not prompts[0]:
            raise APIError(400, "prompt is empty", param="prompt")
        req = _request(body, model, _max_tokens(body.max_tokens, 16), prompt=prompts[0])
        cid, created = f"cmpl-{req.request_id}", int(time.time())
        gen = _run(req, request, "/v1/completions", {"prompt": prompts[0]}, stream=bool(body.stream))
        if body.stream:

            def chunk(r: inference_pb2.GenerateResponse) -> dict[str, Any]:
                return {
                    "id": cid,
                    "object": "text_completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {"index": 0, "text": r.text, "logprobs": None, "finish_reason": r.finish_reason or None}
                    ],
                }

            return await _sse(gen, chunk)
        text, last = await _collect(gen)
        return {
            "id": cid,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [
                {"index": 0, "text": text, "logprobs": None, "finish_reason": last.finish_reason if last else "stop"}
            ],
            "usage": _usage(last),
        }

    @app.post("/v1/jobs", status_code=202, openapi_extra=_body_doc(JobRequest))
    async def create_job(request: Request) -> dict[str, Any]:
        from lifecycle.store import Store
        from serving import jobstore

        body = JobRequest.model_validate(await _body(request))
        model = _model(body.model)
        items = []
        for i, it in enumerate(body.items):
            if not (it.prompt or it.messages):
                raise APIError(400, f"items.{i}: needs a prompt or messages", param=f"items.{i}")
            _max_tokens(it.max_tokens, 64)
            item: dict[str, Any] = {"id": it.id or str(i), "max_tokens": it.max_tokens, "temperature": it.temperature}
            if it.messages:
                item["messages"] = [{"role": m.worker_role, "content": m.text()} for m in it.messages]
            else:
                item["prompt"] = it.prompt
            items.append(item)
        if len({it["id"] for it in items}) != len(items):
            raise APIError(400, "items: ids must be unique", param="items")

        def create() -> dict[str, Any]:
            with Store.connect(settings) as store:
                return jobstore.create(settings, store, items, model)

        return await asyncio.to_thread(create)

    @app.get("/v1/jobs/{job_id}")
    async def get_job(job_id: str) -> dict[str, Any]:
        from lifecycle.store import Store
        from serving import jobstore

        def read() -> dict[str, Any] | None:
            with Store.connect(settings) as store:
                return jobstore.view(store, job_id)

        job = await asyncio.to_thread(read)
        if job is None:
            raise APIError(404, f"job {job_id!r} does not exist", param="job_id", code="job_not_found")
        return job

    return app


_BODIES = (GenerateRequest, ChatCompletionRequest, CompletionRequest, JobRequest)


def _body_doc(model: type[BaseModel]) -> dict[str, Any]:
    """The request body of a route that reads its body itself (to bound its size and answer bad JSON
    with the OpenAI error), so that the OpenAPI spec (and schemathesis) still know it."""
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def _document_bodies(app: FastAPI) -> None:
    from fastapi.openapi.utils import get_openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in _BODIES:
                js = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(js.pop("$defs", {}))
                components[model.__name__] = js
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def app_from_env() -> FastAPI:
    """For ``uvicorn --factory``: settings from the environment, workers from LIFECYCLE_WORKERS."""
    from lifecycle.settings import load_settings

    s = load_settings()
    return create_app(s, s.worker_addresses or [f"{s.host}:{s.worker_port + i}" for i in range(s.workers)])
