"""The logic behind the completion routes, apart from HTTP: which model a request names, the worker
request of a body, one completion run on the pool (time to first token, tokens, the inference log),
and its answer whole or as server-sent events. Routes translate; this does the work."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from fastapi import Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from lifecycle.names import split_model_ref
from lifecycle.sequential import token_f1
from lifecycle.v1 import inference_pb2
from serving.gateway.errors import APIError, from_pool, unavailable
from serving.gateway.inference_log import InferenceLog
from serving.gateway.metrics import Metrics
from serving.gateway.pool import PoolError, WorkerPool
from serving.gateway.protocol import Usage
from serving.gateway.rollouts import Plan, Rollouts

Responses = AsyncIterator[inference_pb2.GenerateResponse]
MAX_SHADOWS = 8  # mirrored requests in flight at most: shadowing never queues work behind itself
RECENT_ANSWERS = 10_000


class SamplingBody(Protocol):
    """What every completion body offers (``GenerateRequest``, ``CompletionRequest``, chat)."""

    temperature: float
    top_p: float
    seed: int | None

    def stops(self) -> list[str]: ...
    def token_limit(self) -> int: ...


def usage(resp: inference_pb2.GenerateResponse | None) -> Usage:
    return Usage.of(resp.usage.prompt_tokens, resp.usage.completion_tokens) if resp else Usage.of(0, 0)


class Completions:
    def __init__(
        self, pool: WorkerPool, metrics: Metrics, inference_log: InferenceLog | None, rollouts: Rollouts | None = None
    ) -> None:
        self.pool, self.metrics, self.inference_log, self.rollouts = pool, metrics, inference_log, rollouts
        self.recent: collections.OrderedDict[str, dict[str, str]] = collections.OrderedDict()  # for feedback
        self._shadows: set[asyncio.Task[None]] = set()

    def model(self, name: str | None) -> str:
        """The served model a request names (the served one when it names none): ``name``,
        ``name@version`` or ``name:alias``, checked here and resolved by the worker."""
        served = self.pool.models()
        base = name
        if name is not None:
            try:
                base, _ = split_model_ref(name)
            except ValueError as exc:
                raise APIError(400, str(exc), param="model", code="invalid_model") from None
        if not served:
            raise unavailable("no inference worker is serving a model right now")
        if name is None:
            return next(iter(served))
        if base not in served:
            served_names = ", ".join(served)
            raise APIError(
                404, f"model {name!r} does not exist; served: {served_names}", param="model", code="model_not_found"
            )
        return name

    def request(self, body: SamplingBody, model: str, **text: Any) -> inference_pb2.GenerateRequest:
        """The worker request of a body: its sampling fields, and ``prompt=`` or ``messages=``."""
        return inference_pb2.GenerateRequest(
            request_id=uuid.uuid4().hex, max_tokens=body.token_limit(), temperature=body.temperature,
            top_p=body.top_p, stop=body.stops(), seed=body.seed or 0, model=model, **text,
        )  # fmt: skip

    async def run(
        self, req: inference_pb2.GenerateRequest, route: str, logged: dict[str, Any], key_id: str, stream: bool,
        *, response_id: str = "", user: str = "",
    ) -> Responses:  # fmt: skip
        """The worker's responses for one completion; metrics and the inference log on the way.
        A completion that is not streamed starts over on another worker if its worker dies mid-way.
        Under a rollout (``rollouts.py``) the request may go to the challenger (a challenger that fails
        before its first token is recorded as failed and the champion answers) or be mirrored to it."""
        response_id = response_id or req.request_id
        plan = self.rollouts.plan(req.model, user or key_id, req.request_id) if self.rollouts else None
        common = {**logged, "route": route, "api_key_id": key_id}
        if plan is not None and plan.arm == "challenger":
            trial = inference_pb2.GenerateRequest()
            trial.CopyFrom(req)
            trial.model = plan.model
            started = False
            try:
                async for resp in self._one(trial, {**common, "_id": response_id}, plan, stream):
                    started = True
                    yield resp
                return
            except PoolError:
                if started:
                    raise
            plan = Plan(plan.rollout, "champion", req.model, stage=plan.stage)  # the challenger's failure is on record
        answer: list[str] = []  # kept only when a mirror will be compared with it
        keep = plan is not None and plan.shadow is not None
        async for resp in self._one(req, {**common, "_id": response_id}, plan, stream):
            if keep:
                answer.append(resp.text)
            yield resp
        if plan is not None and plan.shadow:
            mirrored = len(self._shadows) < MAX_SHADOWS
            self.metrics.shadows.labels("mirrored" if mirrored else "skipped").inc()
            if mirrored:
                task = asyncio.create_task(self._shadow(req, plan, common, response_id, "".join(answer)))
                self._shadows.add(task)
                task.add_done_callback(self._shadows.discard)

    async def _one(
        self, req: inference_pb2.GenerateRequest, record: dict[str, Any], plan: Plan | None, stream: bool,
        compare: str | None = None,
    ) -> Responses:  # fmt: skip
        t0 = time.monotonic()
        text: list[str] = []
        worker, last, failed = "", None, ""
        route = record["route"]

        def first_token() -> None:
            self.metrics.ttft.labels(route).observe(time.monotonic() - t0)

        cancelled = False
        try:
            async for w, resp in self.pool.generate(req, restartable=not stream, on_first=first_token):
                worker, last = w.name, resp
                text.append(resp.text)
                yield resp
        except (asyncio.CancelledError, GeneratorExit):  # the client went away (held answers: nothing yet)
            cancelled = True
            raise
        except PoolError as exc:
            failed = str(exc)
            raise
        finally:
            if last is not None:
                self.metrics.tokens.inc(last.usage.completion_tokens)
                self.metrics.prompt_tokens.inc(last.usage.prompt_tokens)
                if plan is None or plan.arm != "shadow":
                    self._remember(record["_id"], record["api_key_id"], last, plan)
            if self.inference_log and (last is not None or cancelled or failed):
                used = last.usage if last is not None else inference_pb2.Usage()
                finish = "error" if failed else (last.finish_reason if last else "") or "cancelled"
                rid = record["_id"] if not (failed and plan and plan.arm == "challenger") else f"{record['_id']}:failed"
                self.inference_log.add(
                    {**record, "_id": rid, "model": last.model if last else req.model,
                     "version": last.version if last else "", "digest": last.digest if last else "", "worker": worker,
                     "output": "".join(text), "finish_reason": finish, "error": failed or None,
                     "latency_ms": round((time.monotonic() - t0) * 1000, 1),
                     "prompt_tokens": used.prompt_tokens, "completion_tokens": used.completion_tokens,
                     **(plan.fields() if plan else {}),
                     **({"agreement": round(token_f1(compare, "".join(text)), 4)} if compare is not None and last
                        else {})}
                )  # fmt: skip

    async def _shadow(
        self, req: inference_pb2.GenerateRequest, plan: Plan, common: dict[str, Any], primary: str, answer: str
    ) -> None:
        """The same request, answered by the challenger for the record only (nobody sees it), with its
        agreement with the champion's ``answer``."""
        mirror = inference_pb2.GenerateRequest()
        mirror.CopyFrom(req)
        mirror.model, mirror.request_id, mirror.background = plan.shadow or "", uuid.uuid4().hex, True
        shadow = Plan(plan.rollout, "shadow", mirror.model, stage=plan.stage)
        with contextlib.suppress(PoolError):
            async for _ in self._one(mirror, {**common, "_id": f"{primary}:shadow", "shadow_of": primary}, shadow,
                                     stream=False, compare=answer):  # fmt: skip
                pass

    def _remember(self, response_id: str, key_id: str, last: inference_pb2.GenerateResponse, plan: Plan | None) -> None:
        """Recent answers by id, so feedback right after one needs no Mongo lookup (the log is written later)."""
        self.recent[response_id] = {"model": last.model, "version": last.version, "digest": last.digest,
                                    "api_key_id": key_id,
                                    **(plan.fields() if plan else {})}  # fmt: skip
        while len(self.recent) > RECENT_ANSWERS:
            self.recent.popitem(last=False)


def answer_headers(response_id: str, last: inference_pb2.GenerateResponse | None) -> dict[str, str]:
    """What every answer carries in its headers: its id, the version that answered and its digest."""
    headers = {"x-lifecycle-response-id": response_id}
    if last is not None:
        headers["x-lifecycle-model-version"] = last.version
        headers["x-lifecycle-weights-digest"] = last.digest
    return headers


async def collect(
    responses: Responses, request: Request | None = None
) -> tuple[str, inference_pb2.GenerateResponse | None]:
    """The whole text of a completion and its last response (finish reason, usage, version). With the
    ``request``: a client that goes away stops the generation (its worker frees the row at once) and
    the answer nobody reads is a 499."""

    async def gather() -> tuple[str, inference_pb2.GenerateResponse | None]:
        parts, last = [], None
        async for resp in responses:
            parts.append(resp.text)
            last = resp
        return "".join(parts), last

    if request is None:
        return await gather()
    work, gone = asyncio.ensure_future(gather()), asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not work.done():
            work.cancel()  # into the worker call: the gRPC call is cancelled, the worker frees the row
            with contextlib.suppress(asyncio.CancelledError):
                await work
    if work.cancelled():
        raise APIError(499, "the client closed the request before the answer was ready", code="client_closed")
    return work.result()


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone (the body is read by now, so the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        await asyncio.sleep(0.1)  # not expected after the body; never spin on it


async def sse(
    responses: Responses, chunk: Callable[[inference_pb2.GenerateResponse], BaseModel], response_id: str
) -> StreamingResponse:
    """Server-sent events of a completion, ``data: [DONE]`` last. The stream is started before the
    answer is, so an error before the first token is a plain 4xx/5xx; one after it is an error event."""
    it = responses.__aiter__()
    try:
        first: inference_pb2.GenerateResponse | None = await it.__anext__()
    except StopAsyncIteration:
        first = None

    def event(resp: inference_pb2.GenerateResponse) -> bytes:
        body = chunk(resp)
        unset = {"usage"} if getattr(body, "usage", None) is None else None  # as OpenAI: usage in the last only
        return f"data: {body.model_dump_json(exclude=unset)}\n\n".encode()

    async def events() -> AsyncIterator[bytes]:
        try:
            if first is not None:
                yield event(first)
            async for resp in it:
                yield event(resp)
        except (APIError, PoolError) as exc:
            err = exc if isinstance(exc, APIError) else from_pool(exc)
            yield f"data: {json.dumps(err.body())}\n\n".encode()
        finally:
            await it.aclose()  # type: ignore[attr-defined]
        yield b"data: [DONE]\n\n"

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **answer_headers(response_id, first)}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)
