"""The gateway's view of its gRPC workers: which are up and what they serve (polled), which to send a
request to (least outstanding requests), and a retry on another worker when one fails before its
first token. A transport: it raises ``PoolError``s of its own, which ``errors.py`` maps to HTTP in
one place. Imports grpc, never torch."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import grpc

from lifecycle.names import PARAM_METADATA_KEY, split_model_ref
from lifecycle.v1 import inference_pb2, inference_pb2_grpc

log = logging.getLogger(__name__)
_RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}


class PoolError(Exception):
    """A request the pool could not complete."""


class NoWorkerError(PoolError):
    """No worker up serves the model."""


class WorkersBusyError(PoolError):
    """Every worker serving the model refused the request for lack of room."""


class RequestRejectedError(PoolError):
    """A worker refused the request itself (bad value, unknown model): retrying elsewhere cannot help."""

    def __init__(self, message: str, *, param: str | None, not_found: bool = False) -> None:
        super().__init__(message)
        self.param, self.not_found = param, not_found


class WorkerFailedError(PoolError):
    """The worker failed after the answer had started to reach the client."""


@dataclass(eq=False)
class WorkerHandle:
    address: str
    channel: grpc.aio.Channel
    stub: inference_pb2_grpc.InferenceServiceStub
    up: bool = False
    model: str = ""
    version: str = ""
    queued: int = 0
    outstanding: int = 0
    context_length: int = 0
    max_tokens_limit: int = 0
    name: str = ""
    failures: int = field(default=0)
    loaded: list[tuple[str, str, str]] = field(default_factory=list)  # (model, version, digest) in memory
    stats: inference_pb2.EngineStats | None = None  # the worker engine's EngineStats at the last look (for the metrics)


class WorkerPool:
    """Workers by address. An address ``dns:///HOST:PORT`` (a headless Service) stands for every IP
    the name resolves to, re-resolved every ``resolve_interval``: each pod is a worker of its own, so
    routing, health and retries work per pod."""

    def __init__(self, addresses: list[str], poll_interval: float = 0.5, resolve_interval: float = 10.0) -> None:
        self.addresses = addresses
        self.workers: list[WorkerHandle] = []
        self.poll_interval = poll_interval
        self.resolve_interval = resolve_interval
        self._task: asyncio.Task[None] | None = None
        self._resolved_at = float("-inf")
        #: called with "before_first_token" or "mid_generation" each time a request moves to another worker
        self.on_retry: Callable[[str], None] | None = None

    async def start(self) -> None:
        """Open the channels (in the serving event loop: grpc.aio channels belong to one loop)."""
        await self.resolve()
        await self.refresh()
        self._task = asyncio.create_task(self._poll())

    async def resolve(self) -> None:
        """Add a worker for each new address (DNS names expanded), drop the ones that went away."""
        wanted: list[str] = []
        for addr in self.addresses:
            wanted += await asyncio.to_thread(expand, addr) if addr.startswith("dns:///") else [addr]
        current = {w.address: w for w in self.workers}
        for addr in wanted:
            if addr not in current:
                ch = grpc.aio.insecure_channel(addr, options=[("grpc.enable_retries", 0)])
                self.workers.append(WorkerHandle(addr, ch, inference_pb2_grpc.InferenceServiceStub(ch), name=addr))
        gone = [w for w in self.workers if w.address not in wanted]
        self.workers = [w for w in self.workers if w.address in wanted]
        for w in gone:
            log.info("worker %s left (no longer resolved)", w.address)
            await w.channel.close(grace=30)  # requests in flight on it may finish
        self._resolved_at = time.monotonic()

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for w in self.workers:
            await w.channel.close()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            if time.monotonic() - self._resolved_at >= self.resolve_interval:
                with contextlib.suppress(OSError):
                    await self.resolve()
            await self.refresh()

    async def refresh(self) -> None:
        await asyncio.gather(*(self._refresh_one(w) for w in self.workers))

    async def _refresh_one(self, w: WorkerHandle) -> None:
        try:
            st = await w.stub.ModelStatus(inference_pb2.ModelStatusRequest(), timeout=2.0)
        except grpc.aio.AioRpcError:
            if w.up:
                log.warning("worker %s is down", w.address)
            w.up = False
            return
        if not w.up and st.ready:
            log.info("worker %s is up, serving %s v%s", w.address, st.model, st.version)
        w.up, w.model, w.version, w.queued = st.ready, st.model, st.version, st.queued
        w.context_length, w.max_tokens_limit, w.name = st.context_length, st.max_tokens_limit, st.worker or w.address
        w.loaded = [(v.model, v.version, v.digest) for v in st.loaded]
        w.stats = st.stats if st.HasField("stats") else None

    def models(self) -> dict[str, list[WorkerHandle]]:
        out: dict[str, list[WorkerHandle]] = {}
        for w in self.workers:
            if w.up:
                out.setdefault(w.model, []).append(w)
        return out

    def pick(self, model: str, exclude: set[WorkerHandle]) -> WorkerHandle | None:
        name = split_model_ref(model)[0]  # a version or alias is served by the model's workers
        ready = [w for w in self.workers if w.up and w.model == name and w not in exclude]
        return min(ready, key=lambda w: (w.outstanding, w.queued)) if ready else None

    async def generate(
        self,
        request: inference_pb2.GenerateRequest,
        restartable: bool = False,
        on_first: Callable[[], None] | None = None,
    ) -> AsyncIterator[tuple[WorkerHandle, inference_pb2.GenerateResponse]]:
        """Stream one completion. Before the first token a failed worker is marked down and the request
        goes to the next one; after it, the error reaches the caller, unless ``restartable``: then
        (for a caller that answers only once the completion is whole, so nothing has left the gateway)
        the responses are held until the call ends and a worker failing mid-generation means the
        request starts over on another worker, its partial output dropped. ``on_first`` is called when
        the first response arrives from a worker (time to first token, held or not)."""
        tried: set[WorkerHandle] = set()
        last: grpc.aio.AioRpcError | None = None
        while True:
            w = self.pick(request.model, tried)
            if w is None:
                if last is not None and last.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    raise WorkersBusyError("all workers are busy; retry shortly")
                raise NoWorkerError("no inference worker is serving the model right now")
            tried.add(w)
            w.outstanding += 1
            call = w.stub.Generate(request)
            started = False
            held: list[inference_pb2.GenerateResponse] = []
            try:
                async for resp in call:
                    if on_first is not None:
                        on_first()
                        on_first = None
                    if restartable:
                        held.append(resp)
                        continue
                    started = True
                    yield w, resp
                for resp in held:
                    yield w, resp
                return
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND):
                    raise _rejected(exc) from None
                if started or code not in _RETRYABLE:
                    raise WorkerFailedError(f"worker {w.name} failed mid-stream: {exc.details()}") from None
                if code == grpc.StatusCode.UNAVAILABLE:
                    w.up = False
                when = f"after {len(held)} responses, starting over" if held else "before the first token"
                log.warning("worker %s failed %s (%s); trying another", w.address, when, code.name)
                if self.on_retry is not None:
                    self.on_retry("mid_generation" if held else "before_first_token")
                last = exc
            finally:
                w.outstanding -= 1
                if not call.done():
                    call.cancel()


def expand(address: str) -> list[str]:
    """``dns:///HOST:PORT`` as the sorted ``IP:PORT`` addresses HOST resolves to (none when it does not)."""
    target = address.removeprefix("dns:///")
    host, _, port = target.rpartition(":")
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except (OSError, ValueError):
        return []
    ips = sorted({str(info[4][0]) for info in infos})
    return [f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}" for ip in ips]


def _rejected(exc: grpc.aio.AioRpcError) -> RequestRejectedError:
    if exc.code() == grpc.StatusCode.NOT_FOUND:
        return RequestRejectedError(exc.details() or "model not found", param="model", not_found=True)
    param = next((str(v) for k, v in (exc.trailing_metadata() or ()) if k == PARAM_METADATA_KEY), None)
    return RequestRejectedError(exc.details() or "invalid request", param=param)
