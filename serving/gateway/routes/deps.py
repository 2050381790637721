"""Dependencies the routers share: what they get from ``app.state`` and the errors they document."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from serving.gateway.completions import Completions
from serving.gateway.protocol import ErrorResponse


def completions(request: Request) -> Completions:
    return request.app.state.completions


def key_id(request: Request) -> str:
    return str(getattr(request.state, "key_id", ""))


CompletionsDep = Annotated[Completions, Depends(completions)]
KeyId = Annotated[str, Depends(key_id)]
#: The error answers every authorised route can give, for the OpenAPI document.
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 429, 502, 503)
}
