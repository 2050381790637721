"""Which layers get LoRA adapters, found by inspecting the model rather than by Llama's names.

``auto`` (the default) is every linear layer inside the model's repeated blocks (attention and MLP):
``nn.Linear`` and GPT-2's ``Conv1D``, never the embeddings or the output head. So Llama/Qwen2 get
q/k/v/o/gate/up/down, Phi-3 its fused ``qkv_proj``/``gate_up_proj``, GPT-NeoX ``query_key_value``,
GPT-2 ``c_attn``/``c_fc``/``c_proj``. ``all-linear`` is peft's own rule (every linear layer but the
output head). An explicit list must name layers that exist: a name that matches nothing is an error
naming it and the layers the model has (peft would silently adapt only the names that matched).
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn

AUTO, ALL_LINEAR = "auto", "all-linear"
_IN_BLOCK = re.compile(r"\.\d+\.")  # a module inside a ModuleList of layers: model.layers.3.self_attn.q_proj


class TargetError(ValueError):
    """The target modules named do not fit the model; the message names them."""


def _linear_types() -> tuple[type, ...]:
    from transformers.pytorch_utils import Conv1D

    return (nn.Linear, Conv1D)


def block_linears(model: nn.Module) -> list[str]:
    """Leaf names of the linear layers in the model's repeated blocks, sorted."""
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    kinds = _linear_types()
    names = {
        full.rsplit(".", 1)[-1]
        for full, module in model.named_modules()
        if isinstance(module, kinds) and module is not head and _IN_BLOCK.search(f".{full}")
    }
    return sorted(names)


def parse(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """A CLI / DAG / Kafka value as a list of names: "auto", "all-linear", "q_proj,v_proj" or a list."""
    items = spec.split(",") if isinstance(spec, str) else [str(s) for s in spec]
    names = [s.strip() for s in items if s.strip()]
    if not names:
        raise TargetError("target-modules: give auto, all-linear or layer names")
    if len(names) > 1 and ({AUTO, ALL_LINEAR} & set(names)):
        raise TargetError(f"target-modules: {AUTO!r} and {ALL_LINEAR!r} stand alone, got {','.join(names)}")
    return names


def resolve(spec: list[str], model: nn.Module) -> str | list[str]:
    """What peft's ``LoraConfig(target_modules=...)`` gets for ``spec`` on ``model``."""
    names = parse(spec)
    found = block_linears(model)
    if names == [ALL_LINEAR]:
        return ALL_LINEAR
    if names == [AUTO]:
        if not found:
            raise TargetError(f"{type(model).__name__} has no linear layers in repeated blocks; name them explicitly")
        return found
    leaves = {full.rsplit(".", 1)[-1] for full, m in model.named_modules() if isinstance(m, _linear_types())}
    missing = [n for n in names if n not in leaves]
    if missing:
        raise TargetError(
            f"target modules {', '.join(missing)} match no linear layer of {type(model).__name__}; "
            f"its block layers are: {', '.join(found) or 'none'}"
        )
    return names


def describe(resolved: Any) -> str:
    return resolved if isinstance(resolved, str) else ",".join(resolved)
