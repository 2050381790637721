"""gRPC inference worker: the engine behind ``lifecycle.v1.InferenceService`` and ``grpc.health.v1``.
This module is where a worker process is wired together: engine, gRPC server, model-event consumer
(hot swap) and job consumer, each given only what it needs.

    python -m serving.worker --port 50051 [--model-path DIR]     # usually started by `lifecycle serve`

On start it subscribes to ``lifecycle.model-events`` (a consumer group of its own, so every worker sees
every promotion), then loads the champion from the MLflow registry (or ``--model-path``). Health is
NOT_SERVING until a model is warm. Promotions and rollbacks are applied by ``model_events``; queued
jobs by ``job_consumer``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import hmac
import logging
import os
import socket
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from lifecycle import logs
from lifecycle.names import PARAM_METADATA_KEY, split_model_ref
from lifecycle.settings import Settings, load_settings
from lifecycle.v1 import inference_pb2, inference_pb2_grpc
from serving.worker import loader
from serving.worker.engine import Delta, Engine, EngineError, ModelSlot, QueueFullError, SamplingParams
from serving.worker.resident import Resident

log = logging.getLogger(__name__)
SERVICE = "lifecycle.v1.InferenceService"


def set_health(servicer: health.HealthServicer, ok: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
    for svc in ("", SERVICE):
        servicer.set(svc, status)


def switcher(engine: Engine, health_servicer: health.HealthServicer, name: str) -> Callable[[ModelSlot], None]:
    """``switch(slot)``: serve a warm slot from the next decode step (in-flight requests finish on the
    old one) and report SERVING."""

    def switch(slot: ModelSlot) -> None:
        previous = engine.swap(slot)
        set_health(health_servicer, True)
        was = f"v{previous.version}" if previous else "nothing"
        log.info("%s: serving %s v%s (was %s)", name, slot.name, slot.version, was)

    return switch


def stream_gap(least: float, rate: float, streams: int) -> float:
    """Seconds a stream waits at least between two messages: ``least`` (LIFECYCLE_STREAM_INTERVAL), or its
    share of ``rate`` messages a second (LIFECYCLE_STREAM_RATE, 0: none) among ``streams`` answers, if longer.
    Each message costs the worker's loop, the gateway and the client a few hundred microseconds of the cores
    the engine decodes on: a full batch sends a few tokens a message instead of a message a token."""
    return max(least, streams / rate) if rate > 0 else least


class _Mailbox:
    """Deltas from the engine thread to the gRPC event loop, one wake-up of the loop per batch: a decode
    step emits a token for every running request, and a wake-up each (a write to the loop's self-pipe, the
    loop taking the GIL) competed with the engine thread for the cores."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.lock = threading.Lock()
        self.items: list[tuple[asyncio.Queue[Delta], Delta]] = []

    def post(self, queue: asyncio.Queue[Delta], d: Delta) -> None:
        with self.lock:
            self.items.append((queue, d))
            wake = len(self.items) == 1
        if wake:
            self.loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self.lock:
            items, self.items = self.items, []
        for queue, d in items:
            queue.put_nowait(d)


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    """Translates gRPC to the engine and back; ``switch`` serves a slot that ``LoadModel`` loaded;
    ``resident`` holds every loaded version (requests may name one)."""

    def __init__(
        self, settings: Settings, name: str, engine: Engine, switch: Callable[[ModelSlot], None], resident: Resident
    ) -> None:
        self.settings, self.name, self.engine, self.switch, self.resident = settings, name, engine, switch, resident
        self.model_path = ""  # the --model-path this worker was started with: the one folder LoadModel may name
        self._mailbox: _Mailbox | None = None  # for the loop the server runs on

    async def target(self, ref: str, context: grpc.aio.ServicerContext) -> ModelSlot:
        """The slot a request's ``model`` names: the served one, or a version/alias (loaded on demand)."""
        slot = self.engine.current
        if slot is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "no model is loaded yet")
        assert slot is not None
        if not ref:
            return slot
        try:
            name, which = split_model_ref(ref)
        except ValueError as exc:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, str(exc), trailing_metadata=((PARAM_METADATA_KEY, "model"),)
            )
        if name != slot.name:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"model {name!r} is not served here; {slot.name!r} is")
        found = self.resident.lookup(name, which)
        if found is not None:
            return found
        try:
            return await asyncio.to_thread(self.resident.load, name, which)
        except loader.LoadError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"model {ref!r}: {exc}")
        raise AssertionError("unreachable")

    async def Generate(
        self, request: inference_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[inference_pb2.GenerateResponse]:
        engine = self.engine
        slot = await self.target(request.model, context)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Delta] = asyncio.Queue()
        if self._mailbox is None or self._mailbox.loop is not loop:
            self._mailbox = _Mailbox(loop)
        sink = functools.partial(self._mailbox.post, queue)

        params = SamplingParams(
            max_tokens=request.max_tokens or 64,
            temperature=request.temperature,
            top_p=request.top_p or 1.0,
            stop=list(request.stop),
            seed=request.seed or None,
        )
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        submit = functools.partial(engine.submit, prompt=request.prompt if not messages else None,
                                   messages=messages or None, params=params, sink=sink,
                                   request_id=request.request_id, slot=slot,
                                   background=request.background)  # fmt: skip
        # Templating and tokenizing run off the event loop: a long prompt must not hold up health checks
        # and the other streams. A caller that goes away meanwhile has its request cancelled once queued.
        pending = loop.run_in_executor(None, submit)
        try:
            req = await asyncio.shield(pending)
        except asyncio.CancelledError:
            pending.add_done_callback(lambda f: _cancel_submitted(engine, f))
            raise
        except EngineError as exc:
            field = ((PARAM_METADATA_KEY, exc.param),) if exc.param else None
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc), trailing_metadata=field)
        except QueueFullError as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        try:
            least, rate, last, held = self.settings.stream_interval, self.settings.stream_rate, float("-inf"), ""
            while True:
                d = await queue.get()
                while not d.finish_reason and not queue.empty():  # what came meanwhile goes out as one message
                    later = queue.get_nowait()
                    d = (
                        later
                        if later.finish_reason == "error"
                        else dataclasses.replace(later, text=d.text + later.text)
                    )
                if d.finish_reason != "error":
                    d, held = dataclasses.replace(d, text=held + d.text), ""
                if not d.finish_reason and loop.time() - last < stream_gap(least, rate, engine.running()):
                    # too soon: held for the next message
                    held = d.text
                    continue
                last = loop.time()
                if d.finish_reason == "error":
                    await context.abort(grpc.StatusCode.INTERNAL, f"generation failed: {d.error}")
                usage = inference_pb2.Usage(prompt_tokens=d.prompt_tokens, completion_tokens=d.completion_tokens)
                yield inference_pb2.GenerateResponse(text=d.text, finish_reason=d.finish_reason, model=d.model,
                                                     version=d.version, usage=usage,
                                                     digest=req.slot.digest)  # fmt: skip
                if d.finish_reason:
                    return
        finally:
            if not req.done:  # the client went away (or cancelled): free the batch row now
                engine.cancel(req)

    async def ModelStatus(
        self, request: inference_pb2.ModelStatusRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.ModelStatusResponse:
        engine = self.engine
        slot = engine.current
        return inference_pb2.ModelStatusResponse(
            model=slot.name if slot else "",
            version=slot.version if slot else "",
            ready=slot is not None,
            running=engine.running(),
            queued=engine.queued(),
            max_batch=engine.max_batch,
            worker=self.name,
            context_length=slot.context_length if slot else 0,
            max_tokens_limit=engine.max_tokens_limit,
            digest=slot.digest if slot else "",
            stats=engine_stats(engine, len(self.resident.loaded())),
            loaded=[
                inference_pb2.LoadedVersion(model=s.name, version=s.version, digest=s.digest, running=engine.busy(s))
                for s in ([slot] if slot else []) + [s for s in self.resident.loaded() if s is not slot]
            ],
        )

    async def LoadModel(
        self, request: inference_pb2.LoadModelRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.LoadModelResponse:
        refused = self.load_refusal(request.path, dict(context.invocation_metadata()).get("authorization", ""))
        if refused:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, refused)
        model = request.model or self.settings.model_name
        try:
            slot = await asyncio.to_thread(self.resident.load, model, request.version or "champion", request.path)
        except loader.LoadError as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        self.switch(slot)
        return inference_pb2.LoadModelResponse(model=slot.name, version=slot.version, load_seconds=slot.load_seconds)

    def load_refusal(self, path: str, authorization: str) -> str | None:
        """Why an admin ``LoadModel`` may not run, or None. With ``LIFECYCLE_ADMIN_KEYS`` set it needs
        ``authorization: Bearer <admin key>``; a ``path`` may name only the worker's own ``--model-path``
        or a folder of the model cache (a registered version is always loaded verified)."""
        keys = self.settings.admin_keys
        token = authorization[7:].strip() if authorization.lower().startswith("bearer ") else ""
        if keys and not any(hmac.compare_digest(token, k) for k in keys):
            return "LoadModel needs an admin key (metadata authorization: Bearer <one of LIFECYCLE_ADMIN_KEYS>)"
        if path:
            folder, cache = Path(path).resolve(), self.settings.models_dir.resolve()
            own = Path(self.model_path).resolve() if self.model_path else None
            if folder != own and not folder.is_relative_to(cache):
                return f"path {path} is neither this worker's --model-path nor a folder of the model cache {cache}"
        return None


def _cancel_submitted(engine: Engine, submitted: asyncio.Future[Any]) -> None:
    if not submitted.cancelled() and submitted.exception() is None:
        engine.cancel(submitted.result())


def create_server(
    servicer: InferenceServicer, health_servicer: health.HealthServicer, port: int, host: str = "127.0.0.1"
) -> tuple[grpc.aio.Server, int]:
    """The gRPC server with the inference and health services; port 0 picks a free one."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    inference_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise RuntimeError(f"worker: cannot bind {host}:{port} (in use?)")
    return server, bound


def first_slot(settings: Settings, resident: Resident, model_path: str, follow: bool) -> ModelSlot:
    """What a worker serves first: the registry's champion. A local folder (``--model-path``) instead
    when the worker does not follow the registry (no events), and while the registry has no champion
    when it does: a worker started again in the middle of a rollout serves what the registry says."""
    name = settings.model_name
    if not model_path:
        return resident.load(name, "champion")
    number = loader.resolve_version(settings, name, "champion") if follow else None  # resolved once
    return resident.load(name, number) if number else resident.load(name, "champion", model_path)


async def serve(
    settings: Settings,
    port: int,
    name: str,
    model_path: str = "",
    threads: int = 0,
    max_batch: int = 32,
    events: bool = True,
    drain_seconds: float = 30.0,
) -> None:
    """Run one worker until SIGTERM/SIGINT, then drain."""
    import torch

    from serving.worker.job_consumer import JobConsumer
    from serving.worker.model_events import ModelEventConsumer

    engine = Engine(max_batch=max_batch, max_queue=256, threads=threads or torch.get_num_threads(),
                    background_share=settings.rollout_shadow_budget)  # fmt: skip
    resident = Resident(settings, engine, settings.resident_versions)
    health_servicer = health.HealthServicer()
    set_health(health_servicer, False)
    switch = switcher(engine, health_servicer, name)
    servicer = InferenceServicer(settings, name, engine, switch, resident)
    servicer.model_path = model_path
    server, bound = create_server(servicer, health_servicer, port, settings.host)
    await server.start()
    log.info("%s: listening on %s:%d", name, settings.host, bound)
    serving = lambda: engine.current.version if engine.current else None  # noqa: E731
    watcher = ModelEventConsumer(settings, name, serving, switch, resident.load) if events else None
    if watcher:
        await asyncio.to_thread(watcher.start)  # subscribed before the champion is read: no promotion missed
    try:
        switch(await asyncio.to_thread(first_slot, settings, resident, model_path, events))
    except loader.LoadError as exc:
        log.warning("%s: not serving yet: %s (waiting for a promotion)", name, exc)
    engine.start()
    job_consumer = JobConsumer(settings, name, engine) if events else None
    if job_consumer:
        job_consumer.start()
    await _until_signalled()
    # Drain: NOT_SERVING first (the gateway and the kubelet stop sending), then let running requests
    # finish before the server goes (Kubernetes' terminationGracePeriodSeconds bounds the whole).
    set_health(health_servicer, False)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + drain_seconds
    while (engine.running() or engine.queued()) and loop.time() < deadline:
        await asyncio.sleep(0.1)
    await server.stop(grace=5)
    for part in (watcher, job_consumer):
        if part:
            part.stop()
    engine.stop()


async def _until_signalled() -> None:
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def main(argv: list[str] | None = None) -> Any:
    p = argparse.ArgumentParser(prog="python -m serving.worker", description="gRPC inference worker")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--name", default="")
    p.add_argument(
        "--model-path",
        default="",
        help="serve a local HF folder while the registry has no champion (always with --no-events)",
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--no-events", action="store_true", help="no Kafka (no hot swap, no jobs)")
    p.add_argument("--drain-seconds", type=float, default=30.0, help="on SIGTERM, wait this long for running requests")
    args = p.parse_args(argv)
    settings = load_settings()
    logs.setup(settings.log_level, settings.log_format)
    # Unique per host (container, pod): each worker needs its own consumer group to see every promotion.
    name = args.name or f"{socket.gethostname()}-{args.port}"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    asyncio.run(
        serve(settings, args.port, name, args.model_path, args.threads, args.max_batch, not args.no_events,
              args.drain_seconds)
    )  # fmt: skip


def engine_stats(engine: Any, adapters: int) -> inference_pb2.EngineStats:
    """The engine's running totals and its KV storage now, for ModelStatus (the gateway's metrics)."""
    t = engine.totals
    kv_bytes, used, rows = engine.kv_usage()
    counts = ("decode_passes", "decode_rows", "prefill_passes", "prefill_tokens", "prompt_tokens", "completion_tokens")
    return inference_pb2.EngineStats(
        **{k: int(t[k]) for k in counts}, decode_seconds=float(t["decode_seconds"]),
        prefill_seconds=float(t["prefill_seconds"]), prefix_tokens=engine.prefix_tokens,
        kv_bytes=kv_bytes, kv_rows_used=used, kv_rows=rows, adapters=adapters,
    )  # fmt: skip
