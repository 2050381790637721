"""The one error shape of the gateway: ``APIError`` (an error answered with the OpenAI error body),
the exception handlers that turn everything else into it (validation, unknown routes, the worker
pool's transport errors) and ``from_pool``, the one place where a pool error becomes an HTTP status."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from serving.gateway.pool import NoWorkerError, PoolError, RequestRejectedError, WorkersBusyError


class APIError(Exception):
    """An error answered with the OpenAI error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def unavailable(message: str) -> APIError:
    return APIError(503, message, type="server_error", code="unavailable", headers={"Retry-After": "2"})


def from_pool(exc: PoolError) -> APIError:
    """What the client is told when the worker pool could not complete its request."""
    if isinstance(exc, RequestRejectedError):
        if exc.not_found:
            return APIError(404, str(exc), param="model", code="model_not_found")
        return APIError(400, str(exc), param=exc.param)
    if isinstance(exc, WorkersBusyError):
        return APIError(429, str(exc), type="rate_limit_error", code="overloaded", headers={"Retry-After": "1"})
    if isinstance(exc, NoWorkerError):
        return unavailable(str(exc))
    return APIError(502, str(exc), type="server_error", code="worker_failed")


def install(app: FastAPI) -> None:
    """Answer every error of ``app`` with the OpenAI error body."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(PoolError)
    async def _pool_error(request: Request, exc: PoolError) -> JSONResponse:
        return from_pool(exc).response()

    @app.exception_handler(ValidationError)
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError | ValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", []) if p != "body"]
        param = ".".join(loc) or None
        msg = first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":
            msg, param = f"request body is not valid JSON: {first.get('ctx', {}).get('error', msg)}", None
        return APIError(400, f"{param}: {msg}" if param else msg, param=param).response()

    @app.exception_handler(404)
    async def _not_found(request: Request, exc: Exception) -> JSONResponse:
        return APIError(404, f"no route {request.url.path}", code="not_found").response()

    @app.exception_handler(405)
    async def _not_allowed(request: Request, exc: Exception) -> JSONResponse:
        return APIError(
            405, f"{request.method} is not allowed on {request.url.path}", code="method_not_allowed"
        ).response()
