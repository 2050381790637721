"""What the engine serves and is asked: model versions (``ModelSlot``), requests, their sampling
parameters and the deltas their sinks receive. Imported through ``serving.worker.engine``."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

log = logging.getLogger(__name__)


class EngineError(ValueError):
    """A request the engine refuses; the message names the field, ``param`` is its name."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class QueueFullError(RuntimeError):
    """The bounded queue is full: back off and retry."""


@dataclass
class SamplingParams:
    max_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None


@dataclass
class Delta:
    """What a sink receives: new text, and on the last call finish_reason ("stop"/"length"/"error")."""

    text: str
    finish_reason: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model: str = ""
    version: str = ""
    error: str = ""


Sink = Callable[[Delta], None]


@dataclass(eq=False)
class ModelSlot:
    """One servable model version: ``model`` (resident, shared by versions on the same base) and the
    key of the LoRA adapter loaded on it, or None for the model as it is."""

    name: str
    version: str
    model: Any
    tokenizer: Any
    context_length: int = 2048
    load_seconds: float = 0.0
    adapter: str | None = None
    digest: str = ""

    def __post_init__(self) -> None:
        eos = self.tokenizer.eos_token_id
        ids = set(eos if isinstance(eos, list) else [eos]) if eos is not None else set()
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        if gen_eos is not None:
            ids |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos])
        self.eos_ids = ids

    def encode(self, prompt: str | None, messages: list[dict[str, str]] | None) -> list[int]:
        if messages:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            text = prompt or ""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])


@dataclass(eq=False)
class Request:
    id: str
    prompt_ids: list[int]
    params: SamplingParams
    sink: Sink
    slot: ModelSlot
    generator: torch.Generator | None = None
    out_ids: list[int] = field(default_factory=list)
    text: str = ""  # decoded so far
    sent: int = 0  # characters of ``text`` already sent
    cancelled: bool = False
    done: bool = False
    row: int = -1
    background: bool = False  # spare capacity only (shadow traffic)
    submitted: float = field(default_factory=time.monotonic)
    _prefix: int = 0  # incremental detokenization: tokens [_prefix, _read) were decoded last time
    _read: int = 0


def deliver(req: Request, delta: Delta) -> None:
    try:
        req.sink(delta)
    except Exception:
        log.exception("sink of %s failed", req.id)
        req.cancelled = True
