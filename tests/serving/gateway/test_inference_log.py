"""The inference log's retention and content settings against the test stack's MongoDB."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from lifecycle.settings import Settings
from lifecycle.stack import process
from lifecycle.store import INFERENCE_LOG, Store, now
from serving.gateway.inference_log import InferenceLog, metadata_only
from serving.gateway.metrics import Metrics


def test_metadata_only_keeps_no_content_and_a_digest_of_each() -> None:
    a = metadata_only({"route": "/v1/generate", "prompt": "my card is 4111 1111", "output": "ok", "latency_ms": 3})
    b = metadata_only({"route": "/v1/generate", "prompt": "my card is 4111 1111", "output": "no", "latency_ms": 4})
    assert set(a) == {"route", "latency_ms", "prompt_sha256", "output_sha256"}
    assert a["prompt_sha256"] == b["prompt_sha256"] and a["output_sha256"] != b["output_sha256"]
    chat = metadata_only({"messages": [{"role": "user", "content": "hi"}], "output": "hello"})
    assert "messages" not in chat and len(chat["prompt_sha256"]) == 64


@pytest.mark.stack
def test_expired_records_are_swept_and_metadata_mode_stores_no_prompt(stack: Settings) -> None:
    s = stack.model_copy(update={"inference_log_days": 1.0, "inference_log_content": "metadata"})
    marker = f"retention-{uuid.uuid4().hex[:8]}"
    with Store.connect(s) as store:
        col = store.db[INFERENCE_LOG]
        col.insert_many([
            {"_id": f"{marker}-old", "route": marker, "created_at": now() - dt.timedelta(days=2)},
            {"_id": f"{marker}-recent", "route": marker, "created_at": now() - dt.timedelta(hours=1)},
        ])  # fmt: skip
        log = InferenceLog(s, Metrics())
        log.start()
        try:
            log.add({"route": marker, "prompt": "a secret question", "output": "a secret answer"})
            written = process.wait_for(
                lambda: (
                    col.find_one({"_id": f"{marker}-old"}) is None
                    and col.count_documents({"route": marker, "output_sha256": {"$exists": True}}) == 1
                ),
                timeout=30,
            )
        finally:
            log.stop()
        assert written == "ok"
        assert col.find_one({"_id": f"{marker}-recent"}) is not None  # within the retention: kept
        new = col.find_one({"route": marker, "output_sha256": {"$exists": True}})
        assert new is not None and "prompt" not in new and "output" not in new and len(new["prompt_sha256"]) == 64
        col.delete_many({"route": marker})
