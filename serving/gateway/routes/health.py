"""Probes and metrics: ``GET /healthz`` (the process answers), ``GET /readyz`` (some worker serves; 503
otherwise), both open without a key, and ``GET /metrics`` (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from serving.gateway.protocol import Health, Readiness, WorkerState
from serving.gateway.security import authorize

router = APIRouter()


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    return Health()


@router.get("/readyz", response_model=Readiness, response_model_exclude_none=True,
            responses={503: {"model": Readiness}})  # fmt: skip
async def readyz(request: Request) -> JSONResponse:
    """200 when some worker serves, else 503. The workers (addresses, versions, queues) are listed only
    when no keys are set or the caller gives one: a probe needs the status, not the topology."""
    workers = request.app.state.completions.pool.workers
    body = Readiness(ready=any(w.up for w in workers))
    guard = request.app.state.guard
    if not guard.keys or guard.known(request.headers.get("authorization", "")) is not None:
        body.workers = [
            WorkerState(address=w.address, up=w.up, model=w.model, version=w.version, outstanding=w.outstanding,
                        queued=w.queued)
            for w in workers
        ]  # fmt: skip
    return JSONResponse(body.model_dump(exclude_none=True), status_code=200 if body.ready else 503)


@router.get("/metrics", response_class=PlainTextResponse, dependencies=[Depends(authorize)])
async def metrics(request: Request) -> PlainTextResponse:
    completions = request.app.state.completions
    await completions.pool.refresh()  # the workers' totals as of now, not as of the last poll
    completions.metrics.observe_pool(completions.pool)
    text = generate_latest(completions.metrics.registry).decode()
    return PlainTextResponse(text, media_type=CONTENT_TYPE_LATEST)
