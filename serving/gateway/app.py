"""The REST gateway process: ``POST /v1/generate``, OpenAI-compatible ``/v1/chat/completions``,
``/v1/completions`` (``stream: true`` -> SSE) and ``/v1/models``, queued ``/v1/jobs``, and
``/healthz``, ``/readyz``, ``/metrics``. Requests go to the gRPC workers of a ``WorkerPool``.
This module only assembles: routers in ``routes/``, their logic in ``completions.py`` and ``jobs.py``,
schemas in ``protocol.py``, errors in ``errors.py``, keys and limits in ``security.py``.

    uvicorn --factory serving.gateway.app:app_from_env     # usually started by `lifecycle serve`
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from lifecycle.settings import Settings
from serving.gateway import body, errors, middleware
from serving.gateway.completions import Completions
from serving.gateway.inference_log import InferenceLog
from serving.gateway.jobs import Jobs
from serving.gateway.metrics import Metrics
from serving.gateway.pool import WorkerPool
from serving.gateway.rollouts import Rollouts
from serving.gateway.routes import attach_routers
from serving.gateway.security import Guard


def create_app(
    settings: Settings, worker_addresses: list[str], *, log_inference: bool = True, pool: WorkerPool | None = None
) -> FastAPI:
    """The gateway over the workers at ``worker_addresses`` (or over ``pool``, an in-process stand-in)."""
    pool, metrics = pool or WorkerPool(worker_addresses), Metrics()
    pool.on_retry = lambda when: metrics.retries.labels(when).inc()
    inference_log = InferenceLog(settings, metrics) if log_inference else None
    jobs = Jobs(settings)
    rollouts = Rollouts(settings) if log_inference else None  # rollouts decide on the inference log's records
    if rollouts is not None:
        rollouts.served = lambda model: {w.version for w in pool.workers if w.up and w.model == model}
        rollouts.models = lambda: sorted({w.model for w in pool.workers if w.up and w.model})

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await pool.start()  # grpc.aio channels belong to the serving event loop
        if inference_log:
            inference_log.start()
        if rollouts:
            rollouts.start()
        yield
        await pool.close()
        if rollouts:
            rollouts.stop()
        if inference_log:
            inference_log.stop()
        jobs.close()

    app = FastAPI(title="llm-lifecycle gateway", version="1", lifespan=lifespan)
    app.state.completions = Completions(pool, metrics, inference_log, rollouts)
    app.state.settings = settings
    app.state.guard, app.state.jobs = Guard(settings), jobs
    errors.install(app)
    middleware.install(app, metrics)
    attach_routers(app)
    body.document_bodies(app)
    return app


def app_from_env() -> FastAPI:
    """For ``uvicorn --factory``: settings from the environment, workers from LIFECYCLE_WORKERS."""
    from lifecycle import logs
    from lifecycle.settings import load_settings

    s = load_settings()
    logs.setup(s.log_level, s.log_format)
    return create_app(s, s.worker_addresses or [f"{s.host}:{s.worker_port + i}" for i in range(s.worker_count())])
