"""Many LoRA adapters on one resident base model, unmerged, batched together.

``LoraSet.attach(model)`` wraps nothing at first; ``add(key, folder)`` reads an adapter's safetensors
(a few MB) and wraps each layer it targets in a ``LoraLinear`` that keeps the base layer untouched and
holds every loaded adapter's A and B. Before each forward pass the engine calls ``set_plan`` with the
adapter of each run of tokens. When every token uses one adapter, a wrapped layer adds
``B(A(x)) * scale`` (peft's order of operations, so float32 output equals peft's unmerged model).
When a batch mixes adapters (S-LoRA / Punica's case), the layer stacks the batch's adapters, A along
the rank axis and B along its input axis, and adds ``((x A_all^T) * M) B_all^T`` where ``M`` (one per
forward pass, shared by every layer) holds each token's scale in its own adapter's rank columns and 0
elsewhere: two small matmuls per layer whatever the number of adapters, no per-adapter gather. Tokens
of the base model itself (no adapter) get the base output unchanged.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

ATTR = "_lifecycle_lora"


class AdapterError(ValueError):
    """An adapter that cannot be served unmerged (the message says why)."""


def plain_lora(cfg: dict[str, Any]) -> bool:
    """A LoRA adapter that is only A/B pairs with one rank and scale (what serving batches unmerged)."""
    return (
        cfg.get("peft_type") == "LORA" and not cfg.get("use_dora") and cfg.get("bias", "none") == "none"
        and not cfg.get("rank_pattern") and not cfg.get("alpha_pattern") and not cfg.get("modules_to_save")
        and not cfg.get("lora_bias") and not cfg.get("trainable_token_indices")
    )  # fmt: skip


def servable_unmerged(folder: Path) -> bool:
    """A plain LoRA adapter whose file holds only its A/B pairs: served unmerged. peft also saves a
    copy of a tied embedding when an adapter targets ``lm_head`` (and embedding LoRA has other
    tensors): those are merged into a model of their own instead."""
    from safetensors import safe_open

    if not plain_lora(json.loads((folder / "adapter_config.json").read_text())):
        return False
    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as fh:
        keys = list(fh.keys())
    return bool(keys) and all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in keys)


def read_adapter(folder: Path) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], float]:
    """{module path: (A, B)} and the scale of a plain LoRA adapter folder."""
    from safetensors.torch import load_file

    cfg = json.loads((folder / "adapter_config.json").read_text())
    if not plain_lora(cfg):
        raise AdapterError(f"{folder}: not a plain LoRA adapter (DoRA, biases, patterns or extra modules)")
    r = int(cfg["r"])
    scale = float(cfg["lora_alpha"]) / (r**0.5 if cfg.get("use_rslora") else r)
    tensors = load_file(folder / "adapter_model.safetensors")
    downs = {k: v for k, v in tensors.items() if k.endswith(".lora_A.weight")}
    if not downs or len(tensors) != 2 * len(downs):
        raise AdapterError(f"{folder}: not a LoRA adapter of A/B pairs ({len(tensors)} tensors)")
    pairs = {}
    for key, a in downs.items():
        path = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
        pairs[path] = (a, tensors[key.replace(".lora_A.", ".lora_B.")])
    return pairs, scale


@dataclass
class Plan:
    """The adapters of one forward pass: ``single`` for all tokens, or ``keys`` mixed with ``mask``."""

    single: str | None = None
    keys: tuple[str, ...] = ()
    ranks: tuple[int, ...] = ()
    mask: torch.Tensor | None = None  # [tokens, sum(ranks)]: the token's scale in its adapter's columns
    keep: torch.Tensor | None = None  # the positions the output head sees (``logits_to_keep``)


class LoraLinear(torch.nn.Module):
    """A base linear layer plus any number of LoRA adapters."""

    def __init__(self, base: torch.nn.Module, owner: LoraSet) -> None:
        super().__init__()
        self.base = base
        self.owner = [owner]  # a list: not registered as a submodule
        self.adapters: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}
        self.stacked: dict[tuple[str, ...], tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        plan = self.owner[0].plan
        if plan is None:
            return y
        if plan.single is not None:
            found = self.adapters.get(plan.single)
            if found is None:
                return y
            a, b, scale = found
            h = F.linear(x.to(a.dtype), a)
            if h.dtype != y.dtype:
                return y + F.linear(h, b).to(y.dtype) * scale
            # y + (h B^T) * scale in one call (BLAS's alpha): two ops a layer fewer than peft's
            return torch.addmm(y.reshape(-1, y.shape[-1]), h.reshape(-1, h.shape[-1]), b.t(), alpha=scale).view(y.shape)
        stacked = self._stack(plan)
        if stacked is None:
            return y
        a_all, b_all = stacked
        flat = x.reshape(-1, x.shape[-1]).to(a_all.dtype)
        mask = plan.mask
        assert mask is not None
        if flat.shape[0] != mask.shape[0] and plan.keep is not None:  # an adapter on the head: kept rows only
            mask = mask[plan.keep]
        h = F.linear(flat, a_all) * mask
        if h.dtype != y.dtype:
            return y + F.linear(h, b_all).to(y.dtype).view(y.shape)
        return torch.addmm(y.reshape(-1, y.shape[-1]), h, b_all.t()).view(y.shape)

    def _stack(self, plan: Plan) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The batch's adapters side by side (zeros for one that does not touch this layer)."""
        hit = self.stacked.get(plan.keys)
        if hit is None:
            present = [self.adapters[k] for k in plan.keys if k in self.adapters]
            if not present:
                return None
            a0, b0, _ = present[0]
            parts_a, parts_b = [], []
            for key, rank in zip(plan.keys, plan.ranks, strict=True):
                a, b, _ = self.adapters.get(key, (a0.new_zeros(rank, a0.shape[1]), b0.new_zeros(b0.shape[0], rank), 0))
                parts_a.append(a)
                parts_b.append(b)
            if len(self.stacked) >= 16:
                self.stacked.clear()
            hit = self.stacked[plan.keys] = (torch.cat(parts_a), torch.cat(parts_b, 1))
        return hit


class LoraSet:
    """The adapters loaded on one base model."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.layers: dict[str, LoraLinear] = {}
        self.keys: dict[str, list[str]] = {}  # adapter key -> module paths it touches
        self.shape: dict[str, tuple[int, float]] = {}  # adapter key -> (rank, scale)
        self.plan: Plan | None = None

    @staticmethod
    def attach(model: Any) -> LoraSet:
        found = getattr(model, ATTR, None)
        if found is None:
            found = LoraSet(model)
            object.__setattr__(model, ATTR, found)  # not a submodule: state_dict stays the base's
        return found

    def add(self, key: str, folder: Path) -> int:
        """Load an adapter under ``key``; returns its size in bytes."""
        pairs, scale = read_adapter(folder)
        param = next(self.model.parameters())
        missing = [p for p in pairs if not _has(self.model, p)]
        if missing:
            raise AdapterError(f"{folder}: the base model has no module {missing[0]}")
        self.remove(key)
        size = 0
        for path, (a, b) in pairs.items():
            layer = self.layers.get(path) or self._wrap(path)
            a, b = a.to(param.device, param.dtype), b.to(param.device, param.dtype)
            layer.adapters[key] = (a, b, scale)
            size += a.numel() * a.element_size() + b.numel() * b.element_size()
        self.keys[key] = list(pairs)
        self.shape[key] = (next(iter(pairs.values()))[0].shape[0], scale)
        return size

    def remove(self, key: str) -> None:
        for path in self.keys.pop(key, []):
            self.layers[path].adapters.pop(key, None)
        self.shape.pop(key, None)
        for layer in self.layers.values():
            layer.stacked.clear()

    def set_plan(self, adapters: list[str | None], counts: list[int], keep: torch.Tensor | None = None) -> None:
        """The next forward pass: ``counts[i]`` consecutive tokens use adapter ``adapters[i]`` (None: the
        base alone); ``keep``: the token positions the output head is given, when not all."""
        keys = tuple(sorted({a for a in adapters if a is not None}))
        if not keys:
            self.plan = None
        elif len(set(adapters)) == 1:
            self.plan = Plan(single=keys[0])
        else:
            param = next(self.model.parameters())
            ranks = tuple(self.shape[k][0] for k in keys)
            offsets = dict(zip(keys, itertools.accumulate((0, *ranks)), strict=False))
            mask = torch.zeros(sum(counts), sum(ranks), dtype=param.dtype)
            at = 0
            for key, n in zip(adapters, counts, strict=True):
                if key is not None:
                    rank, scale = self.shape[key]
                    mask[at : at + n, offsets[key] : offsets[key] + rank] = scale
                at += n
            self.plan = Plan(keys=keys, ranks=ranks, mask=mask.to(param.device), keep=keep)

    def _wrap(self, path: str) -> LoraLinear:
        from serving.worker.int8 import Int8Linear

        module = self.model.get_submodule(path)
        linear = isinstance(module, Int8Linear) or (hasattr(module, "weight") and module.weight.dim() == 2)
        if not linear:
            raise AdapterError(f"module {path} is not a linear layer")
        layer = LoraLinear(module, self)
        parent, _, child = path.rpartition(".")
        setattr(self.model.get_submodule(parent) if parent else self.model, child, layer)
        self.layers[path] = layer
        return layer


def _has(model: Any, path: str) -> bool:
    try:
        model.get_submodule(path)
    except AttributeError:
        return False
    return True
