"""gRPC inference worker: the engine behind ``lifecycle.v1.InferenceService`` and ``grpc.health.v1``.

    python -m serving.worker --port 50051 [--model-path DIR]     # usually started by `lifecycle serve`

On start it subscribes to ``lifecycle.model-events`` (a consumer group of its own, so every worker sees
every promotion), then loads the champion from the MLflow registry (or ``--model-path``). Health is
NOT_SERVING until a model is warm. Promotions and rollbacks are applied by ``serving.swap``; queued
jobs by ``serving.jobs``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from lifecycle.settings import Settings, load_settings
from lifecycle.v1 import inference_pb2, inference_pb2_grpc
from serving import loader
from serving.engine import Delta, Engine, EngineError, ModelSlot, QueueFullError, SamplingParams

log = logging.getLogger(__name__)
SERVICE = "lifecycle.v1.InferenceService"


class Worker:
    """One engine, the model versions it serves, and its health."""

    def __init__(self, settings: Settings, name: str, max_batch: int = 32, max_queue: int = 256) -> None:
        self.settings = settings
        self.name = name
        self.engine = Engine(max_batch=max_batch, max_queue=max_queue)
        self.health = health.HealthServicer()
        self._set_health(False)

    def _set_health(self, ok: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
        for svc in ("", SERVICE):
            self.health.set(svc, status)

    @property
    def slot(self) -> ModelSlot | None:
        return self.engine.current

    def serve_slot(self, slot: ModelSlot) -> None:
        """Switch to a warm slot between decode steps; in-flight requests finish on the old one."""
        previous = self.engine.swap(slot)
        self._set_health(True)
        log.info(
            "%s: serving %s v%s (was %s)",
            self.name,
            slot.name,
            slot.version,
            f"v{previous.version}" if previous else "nothing",
        )


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    async def Generate(
        self, request: inference_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[inference_pb2.GenerateResponse]:
        engine = self.worker.engine
        slot = engine.current
        if slot is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "no model is loaded yet")
        assert slot is not None
        if request.model and request.model != slot.name:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"model {request.model!r} is not served here; {slot.name!r} is"
            )
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Delta] = asyncio.Queue()
        params = SamplingParams(
            max_tokens=request.max_tokens or 64,
            temperature=request.temperature,
            top_p=request.top_p or 1.0,
            stop=list(request.stop),
            seed=request.seed or None,
        )
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        try:
            req = engine.submit(
                prompt=request.prompt if not messages else None,
                messages=messages or None,
                params=params,
                sink=lambda d: loop.call_soon_threadsafe(queue.put_nowait, d),
                request_id=request.request_id,
            )
        except EngineError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except QueueFullError as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        try:
            while True:
                d = await queue.get()
                if d.finish_reason == "error":
                    await context.abort(grpc.StatusCode.INTERNAL, f"generation failed: {d.error}")
                usage = inference_pb2.Usage(prompt_tokens=d.prompt_tokens, completion_tokens=d.completion_tokens)
                yield inference_pb2.GenerateResponse(
                    text=d.text, finish_reason=d.finish_reason, model=d.model, version=d.version, usage=usage
                )
                if d.finish_reason:
                    return
        finally:
            if not req.done:  # the client went away (or cancelled): free the batch row now
                engine.cancel(req)

    async def ModelStatus(
        self, request: inference_pb2.ModelStatusRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.ModelStatusResponse:
        w = self.worker
        slot = w.engine.current
        return inference_pb2.ModelStatusResponse(
            model=slot.name if slot else "",
            version=slot.version if slot else "",
            ready=slot is not None,
            running=w.engine.running(),
            queued=w.engine.queued(),
            max_batch=w.engine.max_batch,
            worker=w.name,
            context_length=slot.context_length if slot else 0,
            max_tokens_limit=w.engine.max_tokens_limit,
        )

    async def LoadModel(
        self, request: inference_pb2.LoadModelRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.LoadModelResponse:
        try:
            slot = await asyncio.to_thread(
                loader.load,
                self.worker.settings,
                request.model or self.worker.settings.model_name,
                request.version or "champion",
                request.path,
            )
        except loader.LoadError as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        self.worker.serve_slot(slot)
        return inference_pb2.LoadModelResponse(model=slot.name, version=slot.version, load_seconds=slot.load_seconds)


def create_server(worker: Worker, port: int, host: str = "127.0.0.1") -> tuple[grpc.aio.Server, int]:
    """The gRPC server with the inference and health services; port 0 picks a free one."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    inference_pb2_grpc.add_InferenceServiceServicer_to_server(InferenceServicer(worker), server)
    health_pb2_grpc.add_HealthServicer_to_server(worker.health, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise RuntimeError(f"worker: cannot bind {host}:{port} (in use?)")
    return server, bound


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
    from serving import jobs, swap

    if threads:
        import torch

        torch.set_num_threads(threads)
    worker = Worker(settings, name, max_batch=max_batch)
    server, bound = create_server(worker, port, settings.host)
    await server.start()
    log.info("%s: listening on %s:%d", name, settings.host, bound)
    watcher = swap.SwapWatcher(worker) if events else None
    if watcher:
        await asyncio.to_thread(watcher.start)  # subscribed before the champion is read: no promotion missed
    try:
        slot = await asyncio.to_thread(loader.load, settings, settings.model_name, "champion", model_path)
        worker.serve_slot(slot)
    except loader.LoadError as exc:
        log.warning("%s: not serving yet: %s (waiting for a promotion)", name, exc)
    worker.engine.start()
    job_consumer = jobs.JobConsumer(worker) if events else None
    if job_consumer:
        job_consumer.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    # Drain: NOT_SERVING first (the gateway and the kubelet stop sending), then let running requests
    # finish before the server goes (Kubernetes' terminationGracePeriodSeconds bounds the whole).
    worker._set_health(False)
    deadline = loop.time() + drain_seconds
    while (worker.engine.running() or worker.engine.queued()) and loop.time() < deadline:
        await asyncio.sleep(0.1)
    await server.stop(grace=5)
    for part in (watcher, job_consumer):
        if part:
            part.stop()
    worker.engine.stop()


def main(argv: list[str] | None = None) -> Any:
    p = argparse.ArgumentParser(description="gRPC inference worker")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--name", default="")
    p.add_argument("--model-path", default="", help="serve a local HF folder instead of the champion")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--no-events", action="store_true", help="no Kafka (no hot swap, no jobs)")
    p.add_argument("--drain-seconds", type=float, default=30.0, help="on SIGTERM, wait this long for running requests")
    args = p.parse_args(argv)
    settings = load_settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Unique per host (container, pod): each worker needs its own consumer group to see every promotion.
    name = args.name or f"{socket.gethostname()}-{args.port}"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    asyncio.run(
        serve(
            settings,
            args.port,
            name,
            args.model_path,
            args.threads,
            args.max_batch,
            not args.no_events,
            args.drain_seconds,
        )
    )


if __name__ == "__main__":
    main()
