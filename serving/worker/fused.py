"""A decode step of a Llama-family model without Hugging Face's module tree, with the same bits.

At 32 rows a SmolLM2-135M decode step on a 2-core Xeon was ~3,000 torch calls: with int8 weights the
matmuls took a third of the time, the rest went to small ops and the Python around them (each RMSNorm
six ops, each rotary embedding ten, a causal mask built and the decoder layers' keyword plumbing at every
step). This decoder runs the same arithmetic in the same order with fewer calls: RMSNorm as torch's mean
of squares plus one C loop, the rotary embedding in one C loop (``kernels.py``; both give Hugging Face's
bits, checked when the loops load), the residual adds in place, no mask (the engine's KV attention has
each row's length), and every linear layer still called as a module, so int8 groups (``int8.py``) and
LoRA adapters (``lora.py``) work as in the full model. Its tokens equal the module path's (tested).
A prefill (each prompt's tokens packed in one row of tokens) takes it too: a short one was ~35 ms of
op calls in the module path, whatever its few tokens.

Used where it computes what the model does: a ``*ForCausalLM`` whose every decoder layer is a Llama,
Mistral or Qwen2 layer (pre-norm RMSNorm, rotary embedding, SiLU-gated MLP, no q/k norms), float32 on
CPU, with the C loops loaded. Anything else: ``build`` returns None and the engine calls the model.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
from torch.nn import functional as F

from serving.worker import int8, kernels, kv

LAYERS = {"LlamaDecoderLayer", "MistralDecoderLayer", "Qwen2DecoderLayer"}
NORMS = {"LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm"}
PROJECTIONS = (("self_attn", ("q_proj", "k_proj", "v_proj", "o_proj")), ("mlp", ("gate_proj", "up_proj", "down_proj")))


def why_not(model: Any) -> str:
    """Why ``model`` cannot take this decoder ('' when it can)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if not type(model).__name__.endswith("ForCausalLM") or inner is None or not layers:
        return "not a decoder-only model with .model.layers"
    param = next(model.parameters())
    if param.device.type != "cpu" or param.dtype != torch.float32:
        return f"{param.dtype} on {param.device.type} (float32 on CPU only)"
    if (
        not all(hasattr(inner, a) for a in ("embed_tokens", "rotary_emb", "norm"))
        or type(inner.norm).__name__ not in NORMS
    ):
        return "no embed_tokens, rotary_emb or RMSNorm final norm"
    if getattr(model.config, "final_logit_softcapping", None) or getattr(model.config, "pretraining_tp", 1) not in (
        1,
        None,
    ):
        return "logit soft-capping or tensor-parallel pretraining"
    for layer in layers:
        if type(layer).__name__ not in LAYERS:
            return f"{type(layer).__name__} layers"
        attn, mlp = layer.self_attn, layer.mlp
        norms = (layer.input_layernorm, layer.post_attention_layernorm)
        if any(type(n).__name__ not in NORMS for n in norms) or hasattr(attn, "q_norm"):
            return "layer norms other than pre-norm RMSNorm"
        if type(mlp.act_fn).__name__ not in ("SiLUActivation", "SiLU"):
            return f"{type(mlp.act_fn).__name__} activation"
        if not all(hasattr(getattr(layer, part), n) for part, names in PROJECTIONS for n in names):
            return "projections other than q/k/v/o and gate/up/down"
    if getattr(model, "lm_head", None) is None:
        return "no lm_head"
    return ""


class Decoder:
    """``decoder(ids, pos, ctx, keep)`` -> an object with ``.logits``: a decode step's ids and positions [rows, 1]
    give [rows, 1, vocab]; a prefill's packed tokens [1, tokens] (each written to its row and column, ``ctx``)
    give [1, kept, vocab] for the tokens ``keep`` (each prompt's last)."""

    def __init__(self, model: Any, k: kernels.Kernels) -> None:
        self.model = model
        self.k = k

    @staticmethod
    def build(model: Any) -> Decoder | None:
        if why_not(model):
            return None
        k = kernels.load()
        return None if k is None else Decoder(model, k)

    def __call__(self, ids: torch.Tensor, pos: torch.Tensor, ctx: kv.Pass, keep: torch.Tensor | None = None) -> Any:
        inner, k, prefill = self.model.model, self.k, ctx.prefill
        x = inner.embed_tokens(ids[0] if prefill else ids[:, 0])  # [tokens, hidden]: the residual, added in place
        n = x.shape[0]
        cos, sin = inner.rotary_emb(x[None], position_ids=pos.reshape(1, -1))
        cos, sin = cos[0].contiguous(), sin[0].contiguous()
        for layer in inner.layers:
            attn, mlp, norm = layer.self_attn, layer.mlp, layer.input_layernorm
            h = k.rmsnorm(x, norm.weight, norm.variance_epsilon)
            q, key, value = _project(h, attn.q_proj, attn.k_proj, attn.v_proj)
            dim = attn.head_dim
            k.rope_(q, cos, sin, dim)
            k.rope_(key, cos, sin, dim)
            if prefill:  # Hugging Face's layout [1, heads, tokens, dim], as views
                q4, k4, v4 = (t.view(1, n, -1, dim).transpose(1, 2) for t in (q, key, value))
            else:
                q4, k4, v4 = (t.view(n, -1, 1, dim) for t in (q, key, value))
            out, _ = kv.attention(attn, q4, k4, v4, None, scaling=attn.scaling, **{kv.NAME: ctx})
            x.add_(_project(out.reshape(n, -1), attn.o_proj)[0])
            norm = layer.post_attention_layernorm
            h = k.rmsnorm(x, norm.weight, norm.variance_epsilon)
            gate, up = _project(h, mlp.gate_proj, mlp.up_proj)
            x.add_(_project(F.silu(gate).mul_(up), mlp.down_proj)[0])
        if keep is not None:
            x = x.index_select(0, keep)
        h = k.rmsnorm(x, inner.norm.weight, inner.norm.variance_epsilon)
        logits = _project(h, self.model.lm_head)[0]
        return SimpleNamespace(logits=logits[None] if prefill else logits[:, None])


def _project(h: torch.Tensor, *mods: Any) -> tuple[torch.Tensor, ...]:
    """Each module's output on ``h``: where they are an int8 group's parts in order (no adapter wraps one),
    one product split, without the modules' calls (~10 us a layer each at 32 rows)."""
    first = mods[0]
    if type(first) is int8.Int8Linear:
        group = first.group[0]
        if len(group.splits) == len(mods) and all(
            type(m) is int8.Int8Linear and m.group[0] is group and m.idx == i for i, m in enumerate(mods)
        ):
            return tuple(group.compute(h).split(group.splits, -1))
    return tuple(m(h) for m in mods)
