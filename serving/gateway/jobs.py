"""Queued inference for the gateway: the items of a ``POST /v1/jobs`` body as the workers take them,
and the job records in Mongo (one client for the gateway's life, opened on first use)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from pymongo.errors import PyMongoError

from lifecycle import jobstore
from lifecycle.events import PublishError
from lifecycle.settings import Settings
from lifecycle.store import Store
from serving.gateway.errors import APIError, unavailable
from serving.gateway.protocol import JobRequest
from serving.gateway.security import estimate_tokens


def job_items(body: JobRequest) -> list[dict[str, Any]]:
    """Each item as the ``InferenceJobQueued`` event carries it; 400 naming the item when one is bad."""
    items = []
    for i, it in enumerate(body.items):
        if not (it.prompt or it.messages):
            raise APIError(400, f"items.{i}: needs a prompt or messages", param=f"items.{i}")
        item: dict[str, Any] = {"id": it.id or str(i), "max_tokens": it.max_tokens, "temperature": it.temperature}
        if it.messages:
            item["messages"] = [{"role": m.worker_role, "content": m.text()} for m in it.messages]
        else:
            item["prompt"] = it.prompt
        items.append(item)
    if len({it["id"] for it in items}) != len(items):
        raise APIError(400, "items: ids must be unique", param="items")
    return items


def item_cost(item: dict[str, Any]) -> int:
    """What a job item may cost against the key's token budget (see security.py)."""
    text = item.get("prompt") or "".join(m["content"] for m in item.get("messages", []))
    return int(item["max_tokens"]) + estimate_tokens(text)


class Jobs:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._store: Store | None = None
        self._lock = threading.Lock()

    def store(self) -> Store:
        with self._lock:
            if self._store is None:
                self._store = Store.connect(self.settings)
            return self._store

    async def create(self, items: list[dict[str, Any]], model: str, owner: str = "") -> dict[str, Any]:
        try:
            return await asyncio.to_thread(lambda: jobstore.create(self.settings, self.store(), items, model, owner))
        except PublishError as exc:
            raise unavailable(f"the job could not be queued (Kafka): {exc}; it is recorded as failed") from None
        except PyMongoError as exc:
            raise self._store_down(exc) from None

    async def get(self, job_id: str) -> dict[str, Any] | None:
        try:
            return await asyncio.to_thread(lambda: jobstore.view(self.store(), job_id))
        except PyMongoError as exc:
            raise self._store_down(exc) from None

    def _store_down(self, exc: Exception) -> APIError:
        with self._lock:  # a fresh client next time, once the server is back
            if self._store is not None:
                self._store.close()
            self._store = None
        return unavailable(f"the job store (MongoDB) is not answering: {type(exc).__name__}")

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
