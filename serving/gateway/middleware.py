"""HTTP middleware of the gateway: a declared body over the limit is refused before any route runs;
every answer is counted and timed per route in ``/metrics``."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response

from serving.gateway.body import MAX_BODY
from serving.gateway.errors import APIError
from serving.gateway.metrics import Metrics


def install(app: FastAPI, metrics: Metrics) -> None:
    @app.middleware("http")
    async def _guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        t0 = time.monotonic()
        try:
            size = int(request.headers.get("content-length") or 0)
        except ValueError:
            size = 0
        if size > MAX_BODY:
            return APIError(
                413, f"request body is {size} bytes; the limit is {MAX_BODY}", code="body_too_large"
            ).response()
        response = await call_next(request)
        path = getattr(request.scope.get("route"), "path", "other")
        metrics.requests.labels(path, str(response.status_code)).inc()
        metrics.latency.labels(path).observe(time.monotonic() - t0)
        return response
