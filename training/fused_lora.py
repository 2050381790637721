"""A fused forward/backward for peft's plain LoRA linear layers during training.

peft computes ``base(x) + lora_B(lora_A(dropout(x.to(fp32)))) * scaling``: with a bf16 base under
autocast that casts every activation to fp32 and back (two full copies per adapted layer), and the
autograd graph gets six nodes per layer (cast, two linears, scale, add, cast back). Here one
autograd function does the same maths in the compute dtype with four matrix products forward and
five backward, the LoRA product added into the base output in place (``addmm_``), and the scaling
folded into the tiny B matrix:

    y      = x W^T + (d(x) A^T)(s B)^T          (d = LoRA dropout, identity when p = 0)
    dx     = g W + d'((g s B) A)                 (one addmm when there is no dropout)
    dA     = (g s B)^T d(x),   d(sB) = g^T (d(x) A^T)

The adapters stay peft modules (same parameters, state dict, save/merge/load), only their
``forward`` is replaced on the instance; anything else (DoRA, LoRA bias, mixed adapter batches,
disabled or merged adapters, non-Linear bases) goes through peft's own forward. Measured on
SmolLM2-135M bf16 on a 2-core CPU: see the README's training benchmark.
"""

from __future__ import annotations

import types
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class _LoRALinear(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        xd: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        lora_a: torch.Tensor,
        lora_b: torch.Tensor,
    ) -> torch.Tensor:
        shape = x.shape
        x2, xd2 = x.reshape(-1, shape[-1]), xd.reshape(-1, shape[-1])
        xa = xd2 @ lora_a.t()
        out = x2 @ weight.t() if bias is None else torch.addmm(bias, x2, weight.t())
        out.addmm_(xa, lora_b.t())
        ctx.same_input = xd is x
        ctx.save_for_backward(xd2, xa, weight, lora_a, lora_b)
        return out.view(*shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        xd2, xa, weight, lora_a, lora_b = ctx.saved_tensors
        shape = grad.shape
        g = grad.reshape(-1, shape[-1])
        gb = g @ lora_b  # [tokens, r]
        grad_x = grad_xd = None
        in_shape = (*shape[:-1], weight.shape[1])
        if ctx.same_input:
            if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
                grad_x = (g @ weight).addmm_(gb, lora_a).view(in_shape)
        else:
            if ctx.needs_input_grad[0]:
                grad_x = (g @ weight).view(in_shape)
            if ctx.needs_input_grad[1]:
                grad_xd = (gb @ lora_a).view(in_shape)
        grad_a = gb.t() @ xd2 if ctx.needs_input_grad[4] else None
        grad_b = g.t() @ xa if ctx.needs_input_grad[5] else None
        return grad_x, grad_xd, None, None, grad_a, grad_b


def _fused_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """Instance ``forward`` of a peft ``lora.Linear``: fused when it is plain LoRA, else peft's."""
    active = [a for a in self.active_adapters if a in self.lora_A]
    if args or kwargs or self.disable_adapters or self.merged or len(active) != 1:
        return type(self).forward(self, x, *args, **kwargs)
    name = active[0]
    base, lora_a, lora_b = self.base_layer, self.lora_A[name], self.lora_B[name]
    if name in getattr(self, "lora_variant", {}) or lora_b.bias is not None or not isinstance(base, nn.Linear):
        return type(self).forward(self, x, *args, **kwargs)
    weight = base.weight
    device = x.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
    x = x.to(dtype)
    xd = self.lora_dropout[name](x)
    a = lora_a.weight.to(dtype)
    b = (lora_b.weight * self.scaling[name]).to(dtype)
    bias = None if base.bias is None else base.bias.to(dtype)
    with torch.autocast(device, enabled=False):
        if weight.requires_grad:  # a trainable base layer: let autograd handle every product
            out = F.linear(x, weight.to(dtype), bias) + F.linear(F.linear(xd, a), b)
            return out
        return _LoRALinear.apply(x, xd, weight.to(dtype), bias, a, b)


def fuse_lora(model: nn.Module) -> int:
    """Give every peft LoRA linear layer of ``model`` the fused forward; return how many."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    count = 0
    for module in model.modules():
        if type(module) is LoraLinear:
            module.forward = types.MethodType(_fused_forward, module)  # type: ignore[method-assign]
            count += 1
    return count


def unfuse_lora(model: nn.Module) -> int:
    """Give the layers ``fuse_lora`` changed peft's own forward back; return how many."""
    count = 0
    for module in model.modules():
        if module.__dict__.pop("forward", None) is not None:
            count += 1
    return count
