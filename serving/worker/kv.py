"""KV storage that does not move, and the attention that reads it.

Every layer's keys and values live in one preallocated tensor per model, ``[rows, kv_heads, columns,
head_dim]``: a sequence owns a row for its whole life and writes each new token's key and value in
place, at its own position. Sequences join (their prompts written into their rows) and leave (the row
is simply free again) without any other row being copied; a decode step attends over a view of the
first ``used rows x longest sequence`` of the storage, never a copy of it. The storage grows (doubling
its columns) when a sequence needs more than it has, and shrinks when idle.

The model stays a stock Hugging Face model: ``prepare`` registers an attention implementation
(``lifecycle_kv``) with transformers' ``AttentionInterface``. It receives each layer's keys and values
after the model applied its position encoding (RoPE or learned), writes them into the storage and runs
``torch.nn.functional.scaled_dot_product_attention`` (through transformers' own SDPA wrapper, so GQA,
scaling and masks are handled as for any model) over the storage with a mask of each row's length.
Called without a ``lifecycle_kv`` context (``generate``, evaluation) it is plain SDPA.

Two kinds of forward pass use it:

* **prefill**: the new prompts packed into one sequence (batch 1) for the weights, their keys and
  values scattered into their rows at columns ``0..len-1``, each attending only to its own row (one
  causal SDPA call per prompt shape, prompts of a shape batched);
* **decode**: one token per row for rows ``lo..hi-1`` (free rows in between get a dummy token that
  only sees itself), written at each row's position, attending to columns ``0..pos`` (an
  ``index_copy_`` and SDPA, or two matmuls on CPU).

On CPU in float32, with the C loops built (``kernels.py``), one C call a layer does either pass: it
writes the new keys and values and attends each token over its own row.
"""

from __future__ import annotations

import collections
import functools
from dataclasses import dataclass
from typing import Any

import torch

from serving.worker import int8, kernels
from serving.worker.prefix import PrefixCache
from serving.worker.slots import Request

NAME = "lifecycle_kv"
_MIN_COLUMNS = 128


@dataclass
class Pass:
    """What one forward pass writes and attends to (built by the engine, read by every layer)."""

    store: KVStore
    prefill: bool
    rows: torch.Tensor  # prefill: the row of each packed token; decode: lo..lo+hi-1
    cols: torch.Tensor  # the column each token's key/value is written to
    mask: torch.Tensor | None  # decode: [hi, 1, 1, width] bool, True = attend
    width: int = 0  # decode: columns attended (longest sequence + 1)
    segments: list[Segment] | None = None  # prefill: the packed prompts grouped by shape
    window: int | None = None
    bias: torch.Tensor | None = None  # decode on CPU: ``mask`` as 0 / -inf, made by the first layer
    lo: int = 0  # decode: the first row (rows are lo..lo+hi-1)
    flat: tuple[tuple[int, ...], torch.Tensor] | None = None  # decode: (storage shape, each key's flat index)
    work: torch.Tensor | None = None  # on CPU with the C loops: each thread's scores, made by the first layer


@dataclass
class Segment:
    """Packed prompts with the same number of new tokens and of cached prefix tokens."""

    length: int  # new tokens of each
    prefix: int  # tokens already in their rows (a cached prefix)
    starts: torch.Tensor  # where each begins in the pack
    rows: torch.Tensor  # their rows


class KVStore:
    """Per-layer key/value storage of up to ``rows`` sequences of up to ``columns`` tokens."""

    def __init__(self, model: Any, rows: int, dtype: torch.dtype | None = None) -> None:
        self.rows = rows
        self.dtype = dtype  # None: the keys' own dtype
        self.columns = 0
        self.k: dict[int, torch.Tensor] = {}
        self.v: dict[int, torch.Tensor] = {}
        self.limit = int(getattr(model.config, "max_position_embeddings", 0) or 1 << 20)

    def ensure(self, columns: int) -> None:
        """Room for ``columns`` tokens per row (existing rows keep their contents)."""
        if columns <= self.columns:
            return
        new = min(max(columns, 2 * self.columns, _MIN_COLUMNS), max(columns, self.limit))
        for cache in (self.k, self.v):
            for layer, t in cache.items():
                grown = t.new_zeros(t.shape[0], t.shape[1], new, t.shape[3])
                grown[:, :, : self.columns] = t
                cache[layer] = grown
        self.columns = new

    def release(self) -> None:
        """Free the storage (no sequence is running)."""
        self.k.clear()
        self.v.clear()
        self.columns = 0

    def layer(self, idx: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The storage of layer ``idx``, allocated on first use with the layer's head shape."""
        if idx not in self.k:
            shape = (self.rows, like.shape[1], self.columns, like.shape[3])
            self.k[idx] = torch.zeros(shape, dtype=self.dtype or like.dtype, device=like.device)
            self.v[idx] = torch.zeros(shape, dtype=self.dtype or like.dtype, device=like.device)
        return self.k[idx], self.v[idx]


def segments(lengths: list[int], prefixes: list[int], rows: list[int], device: torch.device) -> list[Segment]:
    """Prompts packed one after another (``lengths`` new tokens each, after ``prefixes`` cached ones),
    grouped by shape."""
    groups: dict[tuple[int, int], tuple[list[int], list[int]]] = {}
    at = 0
    for n, p, row in zip(lengths, prefixes, rows, strict=True):
        starts, rs = groups.setdefault((n, p), ([], []))
        starts.append(at)
        rs.append(row)
        at += n
    return [Segment(n, p, torch.tensor(st, device=device), torch.tensor(rs, device=device))
            for (n, p), (st, rs) in groups.items()]  # fmt: skip


def _prefill_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                       stores: tuple[torch.Tensor, torch.Tensor], ctx: Pass, **kw: Any) -> torch.Tensor:  # fmt: skip
    """Causal attention of each packed prompt to itself (and its cached prefix) only: one batched SDPA
    call per prompt shape (the causal kernel, no mask, when there is no prefix), never the quadratic
    attention of the whole pack."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    total = query.shape[2]
    out = query.new_empty(1, total, query.shape[1], value.shape[3])
    for seg in ctx.segments or []:
        n, p = seg.length, seg.prefix
        idx = (seg.starts[:, None] + torch.arange(n, device=seg.starts.device)).reshape(-1)
        q = _take(query, idx, len(seg.starts), n)
        if p:  # keys and values of the prefix and the new tokens, from the rows (written already)
            k, v = (t[:, :, : p + n].index_select(0, seg.rows).to(query.dtype) for t in stores)
        else:
            k, v = (_take(t, idx, len(seg.starts), n) for t in (key, value))
        mask = None
        if p or (ctx.window is not None and n > ctx.window):
            i, j = torch.arange(n, device=idx.device)[:, None] + p, torch.arange(p + n, device=idx.device)[None, :]
            mask = (j <= i) & (i - j < ctx.window) if ctx.window is not None else j <= i
            mask = mask[None, None]
        part, _ = sdpa_attention_forward(module, q, k, v, mask, is_causal=mask is None, **kw)
        out[0, idx] = part.reshape(-1, part.shape[2], part.shape[3])
    return out


def shared(
    contexts: list[list[int]], cached: list[int], adapters: list[str | None], least: int
) -> list[tuple[int, int]]:
    """Prompts admitted together that begin alike: for each, ``(leader, length)`` where its first
    ``length`` tokens (more than it has ``cached``, one token at least left) equal those of the earlier
    prompt ``leader`` of the same adapter, which prefills them; ``(-1, 0)`` for a leader. Everyone leads
    unless the prompts save ``least`` tokens of prefill in all (a second pass costs more than a few)."""
    out: list[tuple[int, int]] = []
    leaders: list[int] = []
    for j, (c, adapter) in enumerate(zip(contexts, adapters, strict=True)):
        best, length = -1, cached[j]
        for i in leaders:
            if adapters[i] != adapter:
                continue
            other, n, most = contexts[i], 0, min(len(contexts[i]), len(c) - 1)
            while n < most and other[n] == c[n]:
                n += 1
            if n > length:
                best, length = i, n
        if best < 0:
            leaders.append(j)
        out.append((best, length if best >= 0 else 0))
    saved = sum(n - cached[j] for j, (lead, n) in enumerate(out) if lead >= 0)
    return out if saved >= least else [(-1, 0)] * len(contexts)


def copy_prefix(store: KVStore, copies: list[tuple[int, int, int]]) -> None:
    """``(source row, row, length)``: the first ``length`` columns of each layer's keys and values copied
    from the source row, one indexed copy per layer and length."""
    by_length: dict[int, tuple[list[int], list[int]]] = collections.defaultdict(lambda: ([], []))
    for source, row, length in copies:
        by_length[length][0].append(source)
        by_length[length][1].append(row)
    for n, (sources, rows) in by_length.items():
        s, d = torch.tensor(sources), torch.tensor(rows)
        for cache in (store.k, store.v):
            for t in cache.values():
                t[d.to(t.device), :, :n] = t[:, :, :n].index_select(0, s.to(t.device))


def decode_mask(pos: torch.Tensor, width: int, window: int | None) -> torch.Tensor:
    """Row r attends to columns 0..pos[r] (its own token included)."""
    col = torch.arange(width, device=pos.device)
    mask = col[None, :] <= pos[:, None]
    if window is not None:
        mask &= col[None, :] > pos[:, None] - window
    return mask[:, None, None, :]


def _take(t: torch.Tensor, idx: torch.Tensor, prompts: int, length: int) -> torch.Tensor:
    """[1, heads, total, dim] -> [prompts, heads, length, dim]: the packed tokens ``idx`` as a batch."""
    return t[0].index_select(1, idx).reshape(t.shape[1], prompts, length, t.shape[3]).transpose(0, 1)


def attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    ctx: Pass | None = kwargs.pop(NAME, None)
    if ctx is None:  # not the engine: plain SDPA with the mask transformers built
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if kwargs.get("softcap") is not None:
        raise ValueError("attention soft-capping is not supported by the serving engine")
    k_store, v_store = ctx.store.layer(module.layer_idx, key)
    c = loops() if query.device.type == "cpu" and not kwargs.get("s_aux") and query.shape[-1] <= 256 else None
    if (c is not None and query.dtype == key.dtype == value.dtype == torch.float32
            and k_store.dtype in (torch.float32, torch.float16)
            and query.stride(-1) == key.stride(-1) == value.stride(-1) == 1):  # fmt: skip
        # One C call a layer writes the new keys and values and attends. Decode, 32 rows x 64 columns, SmolLM2's
        # 9 query / 3 KV heads: ~2x the two matmuls of _decode_cpu with the keys in cache (in a whole step the
        # reading of the keys from memory bounds both). Prefill: each packed token over its own row, where
        # SDPA took ~10 ops per prompt shape (a 32-prompt prefill: ~190 -> ~40 ms).
        scaling = query.shape[3] ** -0.5 if kwargs.get("scaling") is None else kwargs["scaling"]
        if ctx.work is None:  # made by the first layer, reused by the others
            ctx.width = int(ctx.cols.max()) + 1 if ctx.prefill else ctx.width
            ctx.work = torch.empty(c.threads(), ctx.width)
        if ctx.prefill:  # [1, heads, tokens, dim] -> [tokens, heads, 1, dim], views
            q, k, v = (t[0].transpose(0, 1)[:, :, None] for t in (query, key, value))
            out = c.attend(q, k, v, k_store, v_store, ctx.cols, ctx.window, scaling, ctx.work, rows=ctx.rows)
            return out.view(1, q.shape[0], q.shape[1], q.shape[3]), None
        lo, hi = ctx.lo, ctx.lo + query.shape[0]
        out = c.attend(query, key, value, k_store[lo:hi], v_store[lo:hi], ctx.cols, ctx.window, scaling, ctx.work)
        return out.view(query.shape[0], 1, query.shape[1], query.shape[3]), None
    if ctx.prefill:  # key: [1, kv_heads, tokens, dim] -> each token into its row and column
        k_store[ctx.rows, :, ctx.cols] = key[0].transpose(0, 1).to(k_store.dtype)
        v_store[ctx.rows, :, ctx.cols] = value[0].transpose(0, 1).to(v_store.dtype)
        return _prefill_attention(module, query, key, value, (k_store, v_store), ctx, **kwargs), None
    lo, hi = ctx.lo, ctx.lo + query.shape[0]
    # decode: key [hi, kv_heads, 1, dim], written by one index_copy_ per storage into its flattened view
    # (index_put_ with a row and a column index: 15.8 us a call at 32 rows here, index_copy_ 11.0)
    if ctx.flat is None or ctx.flat[0] != k_store.shape:
        heads = torch.arange(k_store.shape[1], device=k_store.device)
        at = (ctx.rows[:, None] * k_store.shape[1] + heads) * k_store.shape[2] + ctx.cols[:, None]
        ctx.flat = (k_store.shape, at.reshape(-1))
    dim = k_store.shape[3]
    k_store.view(-1, dim).index_copy_(0, ctx.flat[1], key.reshape(-1, dim).to(k_store.dtype))
    v_store.view(-1, dim).index_copy_(0, ctx.flat[1], value.reshape(-1, dim).to(v_store.dtype))
    keys, values = k_store[lo:hi, :, : ctx.width], v_store[lo:hi, :, : ctx.width]
    if values.dtype != query.dtype:  # a float16 store the C loops did not take
        keys, values = keys.to(query.dtype), values.to(query.dtype)
    if query.device.type == "cpu" and ctx.mask is not None and not kwargs.get("s_aux"):
        return _decode_cpu(query, keys, values, ctx, kwargs.get("scaling")), None
    return sdpa_attention_forward(module, query, keys, values, ctx.mask, **kwargs)


@functools.cache
def loops() -> kernels.Kernels | None:
    """The C loops (``kernels.py``) where they build here: prefill and decode attention in one call a layer."""
    return kernels.load()


def _decode_cpu(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, ctx: Pass, scaling: float | None
) -> torch.Tensor:
    """One query token per row over its row's keys, as two matmuls in float32: on CPU, SDPA with a mask
    was 4-9x slower for one query token (32 rows x 80-1,024 columns, SmolLM2's 9 query / 3 KV heads).
    The query heads sharing a KV head are one matrix (no repeat of keys/values). -> [rows, 1, heads, dim]"""
    rows, heads, _, dim = query.shape
    kv_heads = keys.shape[1]
    scale = dim**-0.5 if scaling is None else scaling
    if ctx.bias is None:
        assert ctx.mask is not None
        ctx.bias = torch.zeros(ctx.mask.shape, dtype=torch.float32).masked_fill_(~ctx.mask, float("-inf"))
    q = query.reshape(rows, kv_heads, heads // kv_heads, dim).float()
    scores = torch.matmul(q, keys.float().transpose(-1, -2)).mul_(scale)
    probs = torch.softmax(scores.add_(ctx.bias), dim=-1)
    # as one batch of 2-D products: matmul's 4-D path took 143 us a layer here (32 rows), bmm 40 us
    flat = values.reshape(rows * kv_heads, values.shape[2], dim)  # a view: rows and heads merge in the storage
    out = torch.bmm(probs.to(values.dtype).view(rows * kv_heads, heads // kv_heads, -1), flat)
    return out.reshape(rows, 1, heads, dim)


def prepare(model: Any) -> None:
    """Route ``model``'s attention through ``attention`` (plain SDPA when the engine is not calling)."""
    from transformers import AttentionInterface

    if NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(NAME, attention)
    if getattr(model.config, "_attn_implementation", None) != NAME:
        model.set_attn_implementation(NAME)


def sliding_window(model: Any) -> int | None:
    """The model's attention window where every layer uses one (Mistral-style), else None."""
    cfg = model.config
    window = getattr(cfg, "sliding_window", None)
    if not window or getattr(cfg, "use_sliding_window", True) is False:
        return None
    if getattr(cfg, "layer_types", None) and any(t != "sliding_attention" for t in cfg.layer_types):
        raise ValueError("models mixing sliding-window and full-attention layers are not supported by the engine")
    return int(window)


class Group:
    """The rows and KV storage of one resident model, and the requests waiting for it."""

    def __init__(self, model: Any, rows: int) -> None:
        param = next(model.parameters())
        prepare(model)
        self.model = model
        self.window = sliding_window(model)
        # float16 keys and values where the base runs int8 on the CPU with the C loops (exactness is given up
        # there already): at 32 rows x ~100 columns a decode step reads as many bytes of them as of weights
        c = loops() if param.device.type == "cpu" else None
        half = c is not None and c.half and any(isinstance(m, int8.Group) for m in model.modules())
        self.store = KVStore(model, rows, torch.float16 if half else None)
        self.rows: list[Request | None] = [None] * rows
        self.pos = [0] * rows  # tokens in each row's KV storage
        self.last = [0] * rows  # each row's latest token (the next step's input)
        self.waiting: collections.deque[Request] = collections.deque()
        self.later: collections.deque[Request] = collections.deque()  # background requests
        self.device = param.device
        self.prefixes = PrefixCache()
        self.fast: Any = None  # the engine's fused decoder for this model (fused.py); None: call the model

    def running(self, background: bool | None = None) -> int:
        return sum(r is not None and background in (None, r.background) for r in self.rows)

    def lane(self, background: bool) -> list[int]:
        return [i for i, r in enumerate(self.rows) if r is not None and r.background == background]

    def users(self) -> bool:  # user (not background) requests waiting or running
        return bool(self.waiting) or bool(self.lane(False))


def usage(groups: list[Group]) -> tuple[int, int, int]:
    """KV storage of ``groups`` now: (bytes allocated, rows holding a request, rows)."""
    return (sum(t.nbytes for g in groups for c in (g.store.k, g.store.v) for t in c.values()),
            sum(r is not None for g in groups for r in g.rows), sum(len(g.rows) for g in groups))  # fmt: skip
