"""Many LoRA adapters on one resident base model, unmerged, batched together.

``LoraSet.attach(model)`` wraps nothing at first; ``add(key, folder)`` reads an adapter's safetensors
(a few MB) and wraps each layer it targets in a ``LoraLinear`` that keeps the base layer untouched and
holds every loaded adapter's A and B. Before each forward pass the engine sets ``plan``: which adapter
each token uses, as groups ``(key, token index or None for all)``. A wrapped layer adds, per group,
``B(A(x)) * scale`` (the order of operations of peft, so float32 output equals peft's unmerged model)
to the base output of that group's tokens only: requests of different adapters share one forward pass
of the base (S-LoRA / Punica's idea, gathered per group rather than by a custom kernel). Tokens of the
base model itself (no adapter) get the base output unchanged.
"""

from __future__ import annotations

import json
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


class LoraLinear(torch.nn.Module):
    """A base linear layer plus any number of LoRA adapters, applied per token group."""

    def __init__(self, base: torch.nn.Module, owner: LoraSet) -> None:
        super().__init__()
        self.base = base
        self.owner = [owner]  # a list: not registered as a submodule
        self.adapters: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        for key, idx in self.owner[0].plan:
            found = self.adapters.get(key)
            if found is None:
                continue
            a, b, scale = found
            if idx is None:
                y = y + F.linear(F.linear(x.to(a.dtype), a), b).to(y.dtype) * scale
            else:
                flat_x, flat_y = x.reshape(-1, x.shape[-1]), y.view(-1, y.shape[-1])
                part = F.linear(F.linear(flat_x.index_select(0, idx).to(a.dtype), a), b).to(y.dtype) * scale
                flat_y.index_add_(0, idx, part)
        return y


class LoraSet:
    """The adapters loaded on one base model."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.layers: dict[str, LoraLinear] = {}
        self.keys: dict[str, list[str]] = {}  # adapter key -> module paths it touches
        self.plan: list[tuple[str, torch.Tensor | None]] = []

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
        size = 0
        for path, (a, b) in pairs.items():
            layer = self.layers.get(path) or self._wrap(path)
            a, b = a.to(param.device, param.dtype), b.to(param.device, param.dtype)
            layer.adapters[key] = (a, b, scale)
            size += a.numel() * a.element_size() + b.numel() * b.element_size()
        self.keys[key] = list(pairs)
        return size

    def remove(self, key: str) -> None:
        for path in self.keys.pop(key, []):
            self.layers[path].adapters.pop(key, None)

    def _wrap(self, path: str) -> LoraLinear:
        module = self.model.get_submodule(path)
        if not hasattr(module, "weight") or module.weight.dim() != 2:
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


def make_plan(adapters: list[str | None], counts: list[int], device: torch.device) -> list[tuple[str, Any]]:
    """Groups of tokens by adapter: ``adapters[i]`` is used by ``counts[i]`` consecutive tokens."""
    keys = {a for a in adapters if a is not None}
    if not keys:
        return []
    if len(set(adapters)) == 1:
        return [(next(iter(keys)), None)]
    starts = [0]
    for n in counts:
        starts.append(starts[-1] + n)
    plan = []
    for key in sorted(keys):
        idx = [i for a, s, e in zip(adapters, starts, starts[1:], strict=False) if a == key for i in range(s, e)]
        plan.append((key, torch.tensor(idx, device=device)))
    return plan
