"""The ``lifecycle.feedback`` watcher's ``apply_function``: each ``FeedbackReceived`` message becomes
an asset event that may start ``llm_curate``. Nothing is landed here: the gateway keeps every
feedback in Mongo before announcing it, and curation reads Mongo, so a message lost between the
offset commit and the asset event only delays a curation until the next message or the schedule."""

from __future__ import annotations

import json
from typing import Any


def accept(message: Any) -> dict[str, Any] | None:
    try:
        data = json.loads(message.value() or b"")
    except (ValueError, UnicodeDecodeError):
        return None  # not an event of ours: nothing to curate
    if not isinstance(data, dict) or data.get("type") != "FeedbackReceived":
        return None
    return {"response_id": str(data.get("response_id", "")), "rating": data.get("rating", 0)}
