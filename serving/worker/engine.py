"""Continuous-batching generation engine: iteration-level scheduling over one or more model versions.

Requests join the running batch between decode steps (their prompts prefilled together) and leave it
the step they finish or are cancelled. The batch's KV cache is one left-padded tensor per layer, so a
decode step is a single forward pass of shape [batch, 1] whatever each sequence's length; rows that
leave are cut out and columns every row pads are trimmed.

A model version is a ``ModelSlot``. ``swap`` makes a new slot current: requests submitted from then on
use it, while requests already bound to the old slot finish on it; the old slot is dropped once empty.

The engine runs in its own thread; results go to a per-request ``sink`` callable (called from that
thread). It knows nothing of gRPC or HTTP.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache

from serving.worker.stops import find_stop, safe_end

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


@dataclass
class ModelSlot:
    """One loaded model version."""

    name: str
    version: str
    model: Any
    tokenizer: Any
    context_length: int = 2048
    load_seconds: float = 0.0

    def __post_init__(self) -> None:
        eos = self.tokenizer.eos_token_id
        ids = set(eos if isinstance(eos, list) else [eos]) if eos is not None else set()
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        if gen_eos is not None:
            ids |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos])
        self.eos_ids = ids
        self.device = next(self.model.parameters()).device
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(ids or {0})

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
    sent: int = 0  # characters of the decoded text already sent
    cancelled: bool = False
    done: bool = False
    submitted: float = field(default_factory=time.monotonic)


class _Batch:
    """The running sequences of one slot and their left-padded KV cache."""

    def __init__(self) -> None:
        self.reqs: list[Request] = []
        self.kv: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.mask = torch.zeros(0, 0, dtype=torch.long)
        self.pos = torch.zeros(0, dtype=torch.long)
        self.last = torch.zeros(0, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.reqs)

    def merge(
        self, reqs: list[Request], kv: list[tuple[torch.Tensor, torch.Tensor]], mask: torch.Tensor, last: torch.Tensor
    ) -> None:
        pos = mask.sum(-1)
        if not self.reqs:
            self.reqs, self.kv, self.mask, self.pos, self.last = list(reqs), kv, mask, pos, last
            return
        t_old, t_new = self.mask.shape[1], mask.shape[1]
        width = max(t_old, t_new)
        pad = torch.nn.functional.pad

        def widen(x: torch.Tensor, t: int) -> torch.Tensor:  # left-pad the sequence axis to `width`
            return x if t == width else pad(x, (0, 0, width - t, 0))

        self.kv = [
            (torch.cat([widen(k0, t_old), widen(k1, t_new)]), torch.cat([widen(v0, t_old), widen(v1, t_new)]))
            for (k0, v0), (k1, v1) in zip(self.kv, kv, strict=True)
        ]
        self.mask = torch.cat([pad(self.mask, (width - t_old, 0)), pad(mask, (width - t_new, 0))])
        self.pos = torch.cat([self.pos, pos])
        self.last = torch.cat([self.last, last])
        self.reqs += reqs

    def keep(self, rows: list[int]) -> None:
        """Keep only ``rows``, then drop the leading columns that every row pads."""
        if len(rows) == len(self.reqs):
            return
        self.reqs = [self.reqs[i] for i in rows]
        if not rows:
            self.kv, self.mask = [], torch.zeros(0, 0, dtype=torch.long)
            self.pos = self.last = torch.zeros(0, dtype=torch.long)
            return
        idx = torch.tensor(rows, device=self.mask.device)
        self.mask = self.mask.index_select(0, idx)
        used = self.mask.any(0).nonzero()
        start = int(used[0]) if len(used) else 0
        self.mask = self.mask[:, start:]
        self.kv = [(k.index_select(0, idx)[:, :, start:], v.index_select(0, idx)[:, :, start:]) for k, v in self.kv]
        self.pos, self.last = self.pos.index_select(0, idx), self.last.index_select(0, idx)


class Engine:
    """Continuous batching over model slots. ``start()`` runs the loop in a thread."""

    def __init__(self, max_batch: int = 32, max_queue: int = 256, max_tokens_limit: int = 1024) -> None:
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.max_tokens_limit = max_tokens_limit
        self.current: ModelSlot | None = None
        self._slots: dict[int, tuple[ModelSlot, collections.deque[Request], _Batch]] = {}
        self._cv = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._ids = itertools.count()
        self.on_retired: Callable[[ModelSlot], None] = lambda slot: None
        self.steps = 0

    # -- public API (any thread) ------------------------------------------------------------
    def swap(self, slot: ModelSlot) -> ModelSlot | None:
        """Serve ``slot`` from now on; returns the previous current slot (it finishes its requests)."""
        with self._cv:
            previous, self.current = self.current, slot
            self._slots.setdefault(id(slot), (slot, collections.deque(), _Batch()))
            self._cv.notify_all()
            return previous

    def submit(
        self,
        prompt: str | None = None,
        messages: list[dict[str, str]] | None = None,
        params: SamplingParams | None = None,
        sink: Sink = lambda d: None,
        request_id: str = "",
    ) -> Request:
        params = params or SamplingParams()
        slot = self.current
        if slot is None:
            raise QueueFullError("no model is loaded yet")
        if params.max_tokens < 1 or params.max_tokens > self.max_tokens_limit:
            raise EngineError(
                f"max_tokens must be between 1 and {self.max_tokens_limit}, got {params.max_tokens}", "max_tokens"
            )
        if params.temperature < 0 or not 0 < params.top_p <= 1:
            raise EngineError(
                "temperature must be >= 0 and top_p in (0, 1]", "temperature" if params.temperature < 0 else "top_p"
            )
        ids = slot.encode(prompt, messages)
        if not ids:
            raise EngineError("prompt is empty", "prompt")
        if len(ids) >= slot.context_length:
            raise EngineError(f"prompt is {len(ids)} tokens; the model's context is {slot.context_length}", "prompt")
        gen = None
        if params.temperature > 0:
            gen = torch.Generator(device="cpu")
            gen.manual_seed(params.seed if params.seed is not None else torch.seed())
        req = Request(request_id or f"req-{next(self._ids)}", ids, params, sink, slot, gen)
        with self._cv:
            if self.queued() >= self.max_queue:
                raise QueueFullError(f"queue is full ({self.max_queue} waiting)")
            self._slots[id(slot)][1].append(req)
            self._cv.notify_all()
        return req

    def cancel(self, req: Request) -> None:
        """Free the request's slot at the next step boundary; its sink gets nothing more."""
        req.cancelled = True
        with self._cv:
            self._cv.notify_all()

    def queued(self) -> int:
        return sum(len(q) for _, q, _ in self._slots.values())

    def running(self) -> int:
        return sum(len(b) for _, _, b in self._slots.values())

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread:
            self._thread.join(timeout=30)

    # -- the loop (engine thread) -----------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stopping and self.queued() + self.running() == 0:
                    self._cv.wait()
                if self._stopping:
                    return
            try:
                self.step()
            except Exception as exc:
                log.exception("engine step failed")
                self._fail_all(str(exc))

    def step(self) -> None:
        """One iteration: admit waiting requests into free batch rows, then decode one token each."""
        with torch.inference_mode():
            for key, (slot, waiting, batch) in list(self._slots.items()):
                self._admit(slot, waiting, batch)
                if len(batch):
                    self._decode(slot, batch)
                if slot is not self.current and not waiting and not len(batch):
                    with self._cv:
                        del self._slots[key]
                    self.on_retired(slot)
        self.steps += 1

    def _admit(self, slot: ModelSlot, waiting: collections.deque[Request], batch: _Batch) -> None:
        free = self.max_batch - self.running()
        new: list[Request] = []
        with self._cv:
            while waiting and len(new) < free:
                req = waiting.popleft()
                if not req.cancelled:
                    new.append(req)
        if not new:
            return
        width = max(len(r.prompt_ids) for r in new)
        ids = torch.full((len(new), width), slot.pad_id, dtype=torch.long)
        mask = torch.zeros((len(new), width), dtype=torch.long)
        for i, r in enumerate(new):
            ids[i, width - len(r.prompt_ids) :] = torch.tensor(r.prompt_ids)
            mask[i, width - len(r.prompt_ids) :] = 1
        ids, mask = ids.to(slot.device), mask.to(slot.device)
        cache = DynamicCache(config=slot.model.config)
        out = slot.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        kv = _kv(cache)
        tokens = self._sample(new, out.logits[:, -1])
        before = len(batch)
        batch.merge(new, kv, mask, tokens)
        alive = self._emit(slot, new, tokens)
        batch.keep(list(range(before)) + [before + i for i, a in enumerate(alive) if a])

    def _decode(self, slot: ModelSlot, batch: _Batch) -> None:
        mask = torch.nn.functional.pad(batch.mask, (0, 1), value=1)
        cache = DynamicCache(ddp_cache_data=batch.kv, config=slot.model.config)
        out = slot.model(
            input_ids=batch.last[:, None],
            attention_mask=mask,
            position_ids=batch.pos[:, None],
            cache=cache,
            use_cache=True,
        )
        batch.kv = _kv(cache)
        batch.mask, batch.pos = mask, batch.pos + 1
        tokens = self._sample(batch.reqs, out.logits[:, -1])
        batch.last = tokens
        alive = self._emit(slot, batch.reqs, tokens)
        batch.keep([i for i, a in enumerate(alive) if a])

    def _sample(self, reqs: list[Request], logits: torch.Tensor) -> torch.Tensor:
        tokens = logits.argmax(-1)
        for i, r in enumerate(reqs):
            if r.params.temperature > 0:
                probs = torch.softmax(logits[i].float() / r.params.temperature, -1)
                if r.params.top_p < 1:
                    sorted_p, order = probs.sort(descending=True)
                    cut = sorted_p.cumsum(-1) - sorted_p > r.params.top_p  # keep the smallest nucleus
                    sorted_p[cut] = 0
                    probs = torch.zeros_like(probs).scatter(0, order, sorted_p)
                tokens[i] = torch.multinomial(probs.cpu(), 1, generator=r.generator).to(tokens.device)[0]
        return tokens

    def _emit(self, slot: ModelSlot, reqs: list[Request], tokens: torch.Tensor) -> list[bool]:
        """Send each request its new text; which of them go on."""
        alive = []
        for r, tok in zip(reqs, tokens.tolist(), strict=True):
            if r.cancelled:
                alive.append(False)
                continue
            finish = ""
            if tok in slot.eos_ids:
                finish = "stop"
            else:
                r.out_ids.append(tok)
            text = slot.tokenizer.decode(r.out_ids, skip_special_tokens=True)
            cut = find_stop(text, r.params.stop, r.sent)
            if cut is not None:
                text, finish = text[:cut], "stop"
            if not finish and len(r.out_ids) >= r.params.max_tokens:
                finish = "length"
            if not finish and len(r.prompt_ids) + len(r.out_ids) >= slot.context_length:
                finish = "length"
            ready = len(text) if finish else safe_end(text, r.params.stop)
            delta = Delta(text[r.sent : ready], finish, model=slot.name, version=slot.version)
            r.sent = max(r.sent, ready)
            if finish:
                r.done = True
                delta.prompt_tokens, delta.completion_tokens = len(r.prompt_ids), len(r.out_ids)
            if delta.text or finish:
                _deliver(r, delta)
            alive.append(not finish and not r.cancelled)
        return alive

    def _fail_all(self, error: str) -> None:
        for _, waiting, batch in self._slots.values():
            for r in [*waiting, *batch.reqs]:
                _deliver(r, Delta("", "error", error=error, model=r.slot.name, version=r.slot.version))
            waiting.clear()
            batch.keep([])


def _kv(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(keys, values) of every layer of a DynamicCache."""
    return [(layer.keys, layer.values) for layer in cache.layers]


def _deliver(req: Request, delta: Delta) -> None:
    try:
        req.sink(delta)
    except Exception:
        log.exception("sink of %s failed", req.id)
        req.cancelled = True
