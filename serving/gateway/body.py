"""Request bodies: read with a size bound (a chunked body has no content-length to check up front),
parsed as JSON with the OpenAI error on bad JSON, validated into the route's request model; and
documented in the OpenAPI schema, since routes take them through a dependency, not a body parameter."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from pydantic import BaseModel

from serving.gateway.errors import APIError

MAX_BODY = 1 << 20  # 1 MiB: prompts are bounded by the context anyway
M = TypeVar("M", bound=BaseModel)
_DOCUMENTED: list[type[BaseModel]] = []


async def read_json(request: Request) -> Any:
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            raise APIError(413, f"request body is over the limit of {MAX_BODY} bytes", code="body_too_large")
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise APIError(400, f"request body is not valid JSON: {exc}") from None
    if (where := lone_surrogate(data)) is not None:
        # JSON may escape half of a UTF-16 pair ("\ud800"); no worker, protobuf or tokenizer takes it.
        raise APIError(400, f"{where or 'body'}: a string holds a lone UTF-16 surrogate (not valid Unicode)",
                       param=where or None)  # fmt: skip
    return data


def lone_surrogate(value: Any, path: str = "") -> str | None:
    """The dotted path of the first string in ``value`` that cannot be encoded as UTF-8, else None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path
        return None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        if isinstance(key, str) and lone_surrogate(key) is not None:
            return f"{path}.{key!a}".lstrip(".")
        found = lone_surrogate(item, f"{path}.{key}".lstrip("."))
        if found is not None:
            return found
    return None


def json_body(model: type[M]) -> Callable[[Request], Awaitable[M]]:
    """Dependency: the body as ``model`` (a ``ValidationError`` is answered naming the field)."""
    _DOCUMENTED.append(model)

    async def read(request: Request) -> M:
        return model.model_validate(await read_json(request))

    return read


def body_doc(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` of a route whose body comes from ``json_body(model)``."""
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def document_bodies(app: FastAPI) -> None:
    """Put the request models read by ``json_body`` into the app's OpenAPI components."""
    from fastapi.openapi.utils import get_openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in _DOCUMENTED:
                js = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(js.pop("$defs", {}))
                components[model.__name__] = js
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
