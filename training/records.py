"""Training records: validate one JSON line (chat or instruction format) into chat messages.

Pure functions, no I/O. A record is either
``{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}`` ending with an
assistant turn, or ``{"instruction": str, "input"?: str, "output": str}``. Extra keys are kept as
metadata (the toy eval set carries a short reference ``answer``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from lifecycle.names import content_hash

ROLES = ("system", "user", "assistant")


class RecordError(ValueError):
    """Why one record was rejected."""


@dataclass(frozen=True)
class Record:
    messages: list[dict[str, str]]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def content_hash(self) -> str:
        """Hash of the conversation itself (metadata excluded): equal content, equal hash."""
        return content_hash(self.messages)

    @property
    def prompt_messages(self) -> list[dict[str, str]]:
        """Everything before the final assistant turn: what a model is asked."""
        return self.messages[:-1]

    @property
    def reference(self) -> str:
        """The final assistant turn: what the model should answer."""
        return self.messages[-1]["content"]

    def to_json(self) -> dict[str, Any]:
        return {"messages": self.messages, **({"meta": self.meta} if self.meta else {})}


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise RecordError(f"field {name!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise RecordError(f"field {name!r} is empty")
    return value


def parse_record(raw: str | dict[str, Any]) -> Record:
    """One record from a JSON line or an already-decoded object; raises ``RecordError``."""
    if isinstance(raw, str):
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise RecordError(f"invalid JSON: {exc.msg} at column {exc.colno}") from None
    else:
        obj = raw
    if not isinstance(obj, dict):
        raise RecordError(f"a record must be a JSON object, got {type(obj).__name__}")
    if "messages" in obj:
        return _parse_chat(obj)
    if "instruction" in obj or "output" in obj:
        return _parse_instruction(obj)
    if "prompt" in obj or "completion" in obj:
        return _parse_prompt_completion(obj)
    raise RecordError(
        "unknown format: expected 'messages' (chat), 'instruction' + 'output', or 'prompt' + 'completion'"
    )


def _parse_chat(obj: dict[str, Any]) -> Record:
    messages = obj["messages"]
    if not isinstance(messages, list) or not messages:
        raise RecordError("field 'messages' must be a non-empty list")
    out = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise RecordError(f"messages[{i}] must be an object")
        role = msg.get("role")
        if role not in ROLES:
            raise RecordError(f"messages[{i}].role is {role!r}; allowed: {', '.join(ROLES)}")
        out.append({"role": role, "content": _text(msg.get("content"), f"messages[{i}].content")})
    if out[-1]["role"] != "assistant":
        raise RecordError("the last message must be from the assistant (the answer to learn)")
    if not any(m["role"] == "user" for m in out):
        raise RecordError("messages need at least one 'user' turn")
    if any(m["role"] == "system" for m in out[1:]):
        raise RecordError("a 'system' message may only come first")
    return Record(out, {k: v for k, v in obj.items() if k != "messages"})


def _parse_instruction(obj: dict[str, Any]) -> Record:
    instruction = _text(obj.get("instruction"), "instruction")
    output = _text(obj.get("output"), "output")
    extra = obj.get("input")
    if extra is not None and not isinstance(extra, str):
        raise RecordError(f"field 'input' must be a string, got {type(extra).__name__}")
    prompt = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
    meta = {k: v for k, v in obj.items() if k not in ("instruction", "input", "output")}
    return Record([{"role": "user", "content": prompt}, {"role": "assistant", "content": output}], meta)


def _parse_prompt_completion(obj: dict[str, Any]) -> Record:
    prompt = _text(obj.get("prompt"), "prompt")
    completion = _text(obj.get("completion"), "completion")
    meta = {k: v for k, v in obj.items() if k not in ("prompt", "completion")}
    return Record([{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}], meta)


def is_eval(content_hash: str, eval_fraction: float, seed: int) -> bool:
    """Deterministic split: a record's side depends only on its content and the seed, so appending
    records never moves an existing one to the other side."""
    bucket = int(hashlib.sha256(f"{seed}:{content_hash}".encode()).hexdigest()[:8], 16) % 10_000
    return bucket < round(eval_fraction * 10_000)
