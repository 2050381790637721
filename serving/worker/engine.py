"""Continuous-batching generation engine: iteration-level scheduling over model versions.

Requests join the running batch between decode steps and leave it the step they finish or are
cancelled. Each resident model (a ``kv.Group``) has a fixed set of batch rows and KV storage that does
not move (``kv.py``): a joining request takes the lowest free row and its prompt is prefilled, packed
with the other new prompts, straight into that row (a beginning it shares with an earlier prompt, a
system prompt, is copied from that prompt's row or the prefix cache, not computed again); a decode
step is one forward pass of one token per row over a view of the storage; a leaving request just
frees its row. Nothing is copied per step, and the text of each request is detokenized incrementally
(only the new tokens).

A model version is a ``ModelSlot``: a model plus, optionally, the key of a LoRA adapter loaded on it
(``lora.py``). Versions that share a base model share its rows and its forward passes, each token
getting its own adapter. ``swap`` makes a slot current: requests submitted from then on use it, while
requests already bound to another slot finish on that one; a slot that is neither current nor busy
is retired (``on_retired``).

Background requests (shadow traffic) use spare capacity: they take rows from the top, never join a
user request's pass (adding no rows or adapter to it) and run in passes of their own, freely while no
user request waits or runs, else for at most ``background_share`` of the engine's time. A user request
finding no free row takes a background row; that request resumes later after the tokens it had made.

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
from typing import Any

import torch

from serving.worker import fused, kv, lora
from serving.worker.sampling import detokenize, sample
from serving.worker.slots import Delta, EngineError, ModelSlot, QueueFullError, Request, SamplingParams, Sink, deliver
from serving.worker.stops import find_stop, safe_end
from serving.worker.threads import one_thread

log = logging.getLogger(__name__)
__all__ = ["Delta", "Engine", "EngineError", "ModelSlot", "QueueFullError", "Request", "SamplingParams", "Sink",
           "one_thread"]  # fmt: skip


class Engine:
    """Continuous batching over model slots. ``start()`` runs the loop in a thread."""

    def __init__(
        self,
        max_batch: int = 32,
        max_queue: int = 256,
        max_tokens_limit: int = 1024,
        prefill_tokens: int = 2048,
        threads: int = 0,
        background_share: float = 0.02,
        share_tokens: int = 32,
    ) -> None:
        self.max_batch = max_batch
        self.background_share = background_share  # engine time background passes may take beside users
        self.threads = threads  # torch threads of the engine thread (0: as the process has them)
        self.max_queue, self.max_tokens_limit = max_queue, max_tokens_limit
        self.prefill_tokens = prefill_tokens  # most prompt tokens prefilled in one pass (one prompt at least)
        self.share_tokens = share_tokens  # fewest prompt tokens a shared beginning must save to get a pass
        self.current: ModelSlot | None = None
        self._groups: dict[int, kv.Group] = {}
        self._busy: dict[ModelSlot, int] = {}  # slot -> requests waiting or running
        self._cv = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._ids = itertools.count()
        self.on_retired: Callable[[ModelSlot], None] = lambda slot: None
        self.steps = 0
        self.prefix_tokens = 0  # prompt tokens not prefilled: their keys/values came from the prefix cache
        self.totals: dict[str, float] = collections.defaultdict(float)  # for the metrics: passes, time, tokens
        self.background_passes = 0
        self.preempted = 0  # background requests that gave their row to a user request
        self._credit = 0.0  # seconds of background work allowed now (<= 0)

    # -- public API (any thread) ------------------------------------------------------------
    def swap(self, slot: ModelSlot) -> ModelSlot | None:
        """Serve ``slot`` from now on; returns the previous current slot (it finishes its requests)."""
        with self._cv:
            previous, self.current = self.current, slot
            self._busy.setdefault(slot, 0)
            self._cv.notify_all()
            return previous

    def submit(
        self,
        prompt: str | None = None,
        messages: list[dict[str, str]] | None = None,
        params: SamplingParams | None = None,
        sink: Sink = lambda d: None,
        request_id: str = "",
        slot: ModelSlot | None = None,
        background: bool = False,
    ) -> Request:
        """Queue a request for ``slot`` (default: the current one); ``background``: spare capacity only."""
        params = params or SamplingParams()
        slot = slot or self.current
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
        req = Request(request_id or f"req-{next(self._ids)}", ids, params, sink, slot, gen, background=background)
        with self._cv:
            if self.queued() >= self.max_queue:
                raise QueueFullError(f"queue is full ({self.max_queue} waiting)")
            group = self._groups.get(id(slot.model))
            if group is None:
                group = self._groups[id(slot.model)] = kv.Group(slot.model, self.max_batch)
                group.fast = fused.Decoder.build(slot.model)  # None: decode steps call the model
            (group.later if background else group.waiting).append(req)
            self._busy[slot] = self._busy.get(slot, 0) + 1
            self._cv.notify_all()
        return req

    def cancel(self, req: Request) -> None:
        """Free the request's row at the next step boundary; its sink gets nothing more."""
        req.cancelled = True
        with self._cv:
            self._cv.notify_all()

    def kv_usage(self) -> tuple[int, int, int]:
        """KV storage now: (bytes allocated, rows holding a request, rows)."""
        return kv.usage(list(self._groups.values()))

    def queued(self) -> int:
        return sum(len(g.waiting) + len(g.later) for g in list(self._groups.values()))

    def running(self) -> int:
        return sum(g.running() for g in list(self._groups.values()))

    def busy(self, slot: ModelSlot) -> int:
        """How many requests are waiting for or running on ``slot``."""
        return self._busy.get(slot, 0)

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
        # OpenMP thread counts are per calling thread: the engine thread sets its own.
        torch.set_num_threads(self.threads or torch.get_num_threads())
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
        """One iteration: admit waiting requests (again if more came meanwhile), then decode a token a row."""
        with torch.inference_mode():
            for key, group in list(self._groups.items()):
                t0 = time.perf_counter()
                if self._admit(group, False) and group.waiting:  # a burst joins before the decode, not a step later
                    self._admit(group, False)
                if group.running(False):
                    self._decode(group, False)
                self._background(group, time.perf_counter() - t0)
                if not group.running() and not group.waiting and not group.later:
                    group.store.release()
                    if self.current is None or id(self.current.model) != key:
                        with self._cv:
                            del self._groups[key]
        self._retire()
        self.steps += 1

    def _retire(self) -> None:
        with self._cv:
            idle = [s for s, n in self._busy.items() if n == 0 and s is not self.current]
            for slot in idle:
                del self._busy[slot]
        for slot in idle:
            self.on_retired(slot)

    def _forward(self, group: kv.Group, ids: torch.Tensor, pos: torch.Tensor, ctx: kv.Pass,
                 adapters: list[str | None], counts: list[int], **kw: Any) -> Any:  # fmt: skip
        lora_set = getattr(group.model, lora.ATTR, None)
        if lora_set is not None:
            keep = kw.get("logits_to_keep")
            lora_set.set_plan(adapters, counts, keep if isinstance(keep, torch.Tensor) else None)
        try:
            if group.fast is not None:  # a step without Hugging Face's module tree (fused.py)
                return group.fast(ids, pos, ctx, kw.get("logits_to_keep"))
            return group.model(input_ids=ids, position_ids=pos, use_cache=False, **{kv.NAME: ctx}, **kw)
        finally:
            if lora_set is not None:
                lora_set.plan = None

    def _background(self, group: kv.Group, spent: float) -> None:
        """One background pass (admit or decode) if the background lane has work and the time for it."""
        users = group.users()
        if users:  # credit grows with the users' time up to 0; a pass runs at 0 and is debited its time
            self._credit = min(self._credit + self.background_share * spent, 0.0)
        if not (group.later or group.lane(True)) or (users and (self.background_share <= 0 or self._credit < 0)):
            return
        t0 = time.perf_counter()
        if not self._admit(group, True, most=1 if users else self.max_batch) and group.running(True):
            self._decode(group, True)
        if users:
            self._credit -= time.perf_counter() - t0
        self.background_passes += 1

    def _preempt(self, group: kv.Group, n: int) -> None:
        """Give the rows of ``n`` background requests to users; they resume later from what they made."""
        for row in group.lane(True)[::-1][:n]:
            req, group.rows[row], self.preempted = group.rows[row], None, self.preempted + 1
            with self._cv:
                group.later.appendleft(req)  # type: ignore[arg-type]

    def _admit(self, group: kv.Group, background: bool, most: int = 0) -> bool:
        queue = group.later if background else group.waiting
        room = self.max_batch - self.running()
        if background:
            room = min(room, max(1, self.max_batch // 4) - group.running(True), most)
        elif queue and len(queue) > room and group.running(True):
            self._preempt(group, len(queue) - room)
            room = self.max_batch - self.running()
        free = [i for i, r in enumerate(group.rows) if r is None]
        free = (free[::-1] if background else free)[: max(room, 0)]  # background rows from the top
        new: list[Request] = []
        tokens = 0
        with self._cv:
            while queue and len(new) < len(free):
                req = queue[0]
                if new and tokens + len(req.prompt_ids) > self.prefill_tokens:
                    break
                queue.popleft()
                if req.cancelled:
                    self._busy[req.slot] -= 1
                    continue
                new.append(req)
                tokens += len(req.prompt_ids)
        if not new:
            return False
        store = group.store
        context = [r.prompt_ids + r.out_ids for r in new]  # a preempted request resumes after its tokens
        store.ensure(max(min(len(r.prompt_ids) + r.params.max_tokens, r.slot.context_length) for r in new))
        for req, row in zip(new, free, strict=False):
            req.row = row
            group.rows[row] = req
        # A prompt that begins like an earlier one starts from that prefix's keys and values.
        cached = group.prefixes.restore(store, [(r.row, r.slot.adapter, c) for r, c in zip(new, context, strict=True)])
        # Prompts of this admission sharing a beginning (a system prompt) prefill it once: the first of
        # them in a pass of its own, the others copy its keys and values and prefill only the rest.
        share = kv.shared(context, cached, [r.slot.adapter for r in new], self.share_tokens)
        if any(lead >= 0 for lead, _ in share):
            first = [i for i, (lead, _) in enumerate(share) if lead < 0]
            self._prefill(group, [new[i] for i in first], [context[i] for i in first], [cached[i] for i in first])
            rest = [i for i, (lead, _) in enumerate(share) if lead >= 0]
            kv.copy_prefix(store, [(new[share[i][0]].row, new[i].row, share[i][1]) for i in rest])
            new, context, cached = [new[i] for i in rest], [context[i] for i in rest], [share[i][1] for i in rest]
        self._prefill(group, new, context, cached)
        return True

    def _prefill(self, group: kv.Group, new: list[Request], context: list[list[int]], cached: list[int]) -> None:
        """Write the prompts (after their ``cached`` beginnings) into their rows, packed in one forward
        pass, and emit each request's first token."""
        t0, store = time.perf_counter(), group.store
        self.prefix_tokens += sum(cached)
        lengths = [len(c) - p for c, p in zip(context, cached, strict=True)]
        self.totals["prefill_tokens"] += sum(lengths)
        dev = group.device
        ids = torch.tensor([t for c, p in zip(context, cached, strict=True) for t in c[p:]], device=dev)
        cols = torch.cat([torch.arange(p, p + n) for p, n in zip(cached, lengths, strict=True)]).to(dev)
        rows = torch.tensor([r.row for r, n in zip(new, lengths, strict=True) for _ in range(n)], device=dev)
        last = torch.tensor(lengths).cumsum(0).sub(1).to(dev)
        segs = kv.segments(lengths, cached, [r.row for r in new], dev)
        ctx = kv.Pass(store, True, rows, cols, None, segments=segs, window=group.window)
        adapters = [r.slot.adapter for r in new]
        out = self._forward(group, ids[None], cols[None], ctx, adapters, lengths, logits_to_keep=last)
        for r in new:
            group.prefixes.save(store, r.row, r.slot.adapter, r.prompt_ids)
        chosen = sample(new, out.logits[0])
        for req, c, tok in zip(new, context, chosen.tolist(), strict=True):
            group.pos[req.row], group.last[req.row] = len(c), tok
        self.totals["prefill_passes"] += 1
        self.totals["prefill_seconds"] += time.perf_counter() - t0
        self._emit(group, new, chosen.tolist())

    def _decode(self, group: kv.Group, background: bool) -> None:
        """One token for each row of a lane, in one pass over the rows from its lowest to its highest.
        A row of the other lane inside that range is computed, not advanced: its key and value go to
        the column its own next step overwrites. Rows not advanced take the lane's adapter, so a lane
        of one adapter keeps its single-adapter pass."""
        t0 = time.perf_counter()
        lane = group.lane(background)
        lo, hi = lane[0], lane[-1] + 1
        reqs = group.rows[lo:hi]
        live = [i - lo for i in lane]
        pos = [group.pos[lo + i] if r is not None else 0 for i, r in enumerate(reqs)]
        ids = [group.last[lo + i] if r is not None else 0 for i, r in enumerate(reqs)]
        width = max(pos) + 1
        group.store.ensure(width)
        dev = group.device
        pos_t = torch.tensor(pos, device=dev)
        mask = kv.decode_mask(pos_t, width, group.window)
        rows = torch.arange(lo, hi, device=dev)
        ctx = kv.Pass(group.store, False, rows, pos_t, mask, width, window=group.window, lo=lo)
        running = [r for r in reqs if r is not None and r.background == background]
        first = running[0].slot.adapter
        adapters = [r.slot.adapter if r is not None and r.background == background else first for r in reqs]
        tokens = torch.tensor(ids, device=dev)[:, None]
        out = self._forward(group, tokens, pos_t[:, None], ctx, adapters, [1] * len(reqs))
        logits = out.logits[:, -1]
        if len(live) < len(reqs):
            logits = logits[torch.tensor(live, device=dev)]
        chosen = sample(running, logits).tolist()
        for req, tok in zip(running, chosen, strict=True):
            group.pos[req.row] += 1
            group.last[req.row] = tok
        self.totals["decode_passes"] += 1
        self.totals["decode_rows"] += len(running)
        self.totals["decode_seconds"] += time.perf_counter() - t0
        self._emit(group, running, chosen)

    def _emit(self, group: kv.Group, reqs: list[Request], tokens: list[int]) -> None:
        """Send each request its new text; free the rows of those that are done."""
        for r, tok in zip(reqs, tokens, strict=True):
            if r.cancelled:
                self._free(group, r)
                continue
            slot = r.slot
            finish = ""
            if tok in slot.eos_ids:
                finish = "stop"
            else:
                r.out_ids.append(tok)
            if not finish and len(r.out_ids) >= r.params.max_tokens:
                finish = "length"
            if not finish and len(r.prompt_ids) + len(r.out_ids) >= slot.context_length:
                finish = "length"
            detokenize(slot.tokenizer, r, final=bool(finish))
            text = r.text
            cut = find_stop(text, r.params.stop, r.sent)
            if cut is not None:
                text, finish = text[:cut], "stop"
            ready = len(text) if finish else safe_end(text, r.params.stop)
            delta = Delta(text[r.sent : ready], finish, model=slot.name, version=slot.version)
            r.sent = max(r.sent, ready)
            if finish:
                r.done = True
                delta.prompt_tokens, delta.completion_tokens = len(r.prompt_ids), len(r.out_ids)
                self.totals["prompt_tokens"] += len(r.prompt_ids)
                self.totals["completion_tokens"] += len(r.out_ids)
            if delta.text or finish:
                deliver(r, delta)
            if finish or r.cancelled:
                self._free(group, r)

    def _free(self, group: kv.Group, req: Request) -> None:
        if req.row >= 0 and group.rows[req.row] is req:
            group.rows[req.row] = None
        with self._cv:
            self._busy[req.slot] = self._busy.get(req.slot, 1) - 1

    def _fail_all(self, error: str) -> None:
        for group in list(self._groups.values()):
            with self._cv:
                failed = [*group.waiting, *group.later, *(r for r in group.rows if r is not None)]
                group.waiting.clear()
                group.later.clear()
            for r in failed:
                deliver(r, Delta("", "error", error=error, model=r.slot.name, version=r.slot.version))
                self._free(group, r)
