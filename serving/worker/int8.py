"""Int8 weights and int8 activations (W8A8) for a resident base model on CPUs where it is measured faster.

Every linear layer's weight is stored as int8 with one scale per output channel; at run time each
token's activations are quantised with a scale of their own (per token, not per tensor: one outlier
token would otherwise flatten every other row of a batch) and multiplied in integers by
``torch._int_mm`` (oneDNN/VNNI on x86): ~4x float32's matmul rate at a decode batch of 32 on a
2-core AVX-512 VNNI Xeon. Activation outlier channels are moved into the weights first
(SmoothQuant, alpha 0.5) from the maxima of a short built-in calibration pass.

Layers that read the same input (q/k/v, gate/up in a Llama block; found by watching the calibration
pass, whatever the architecture) form one group: their weights are concatenated, the input is
quantised once and multiplied once, and each layer takes its columns of the result.

Quality is measured, not assumed: ``apply`` compares the teacher-forced NLL of a built-in check text
under the float and the int8 model and, under ``auto``, keeps the float layers when int8 costs more
than ``MAX_NLL_INCREASE`` (SmolLM2-135M: +0.5 %); the figures are cached per model weights, tokenizer,
this module and machine, so a worker restarting on the same base skips the check. LoRA adapters stay
float and unmerged on top.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from serving.worker import int8_check, kernels

log = logging.getLogger(__name__)

WEIGHTS = ("auto", "float", "int8")
#: int8 must cost at most this relative increase of the check text's NLL to be kept under ``auto``.
MAX_NLL_INCREASE = 0.02
ALPHA = 0.5  # SmoothQuant's migration strength
OUTLIERS = 32  # input channels per group kept in float (SmolLM2: next-token agreement 0.92 with none, 0.97)

CALIBRATION = (
    "The river rose slowly through the night, and by morning the lower fields were under water. Farmers "
    "moved their animals to the hills, while the children watched from the bridge. A letter from the city "
    "arrived two days later: the council would pay for new walls, but only if the work began before winter. "
    "Question: what is 17 multiplied by 23? Answer: 391. def area(r):\n    return 3.14159 * r ** 2\n"
    "In 1969, three astronauts flew to the Moon; two of them walked on its surface for about two hours."
)
CHAT = ("Tell me about the history of tea.", "How do I sort a list in Python?", "Write a haiku about snow.")
MIN_AGREEMENT = 0.93  # SmolLM2 int8 without outlier channels: 0.92, and it answered Paris wrong


@dataclass
class Report:
    kept: bool  # the int8 layers stayed in the model
    layers: int
    groups: int
    nll_float: float
    nll_int8: float
    reason: str
    agreement: float = 1.0  # share of the float model's next-token choices int8 also makes on chat answers

    @property
    def increase(self) -> float:
        return self.nll_int8 / self.nll_float - 1 if self.nll_float > 0 else 0.0


class _Cache:
    """The product of the last input, until every layer of the group took its part. The input is held
    (its memory cannot be reused by another tensor meanwhile) and compared by identity."""

    __slots__ = ("input", "parts", "pending", "version")

    def __init__(self) -> None:
        self.input: torch.Tensor | None = None
        self.version = -1
        self.parts: list[torch.Tensor] = []
        self.pending: set[int] = set()


class Group(torch.nn.Module):
    """The int8 weights of the layers that share one input, concatenated along the output axis."""

    vnni = True  # the VNNI loop where the C loops have it (False: C quantisation + torch._int_mm)

    wq: torch.Tensor  # [out, in] int8
    w_scale: torch.Tensor  # [out]: each output channel's scale
    inv_smooth: torch.Tensor  # [in]: SmoothQuant's division of the input
    outliers: torch.Tensor | None  # input channels computed in float
    w_outliers: torch.Tensor | None  # [len(outliers), out]: their weights
    bias: torch.Tensor | None

    def __init__(self, layers: list[torch.nn.Linear], act_max: torch.Tensor, outliers: int = OUTLIERS) -> None:
        super().__init__()
        w = torch.cat([lin.weight.detach().float() for lin in layers])
        smooth = (act_max.float().clamp(min=1e-5) ** ALPHA / w.abs().amax(0).clamp(min=1e-5) ** (1 - ALPHA)).clamp(
            min=1e-5
        )
        # The input channels with the largest calibration maxima stay float (LLM.int8()'s decomposition):
        # out of the int8 product (their weight columns and inputs zeroed there), added by one small matmul.
        k = min(outliers, w.shape[1] // 8)
        idx = act_max.float().topk(k).indices.sort().values if k else None
        self.register_buffer("outliers", idx)
        self.register_buffer("w_outliers", w[:, idx].t().contiguous().to(layers[0].weight.dtype) if k else None)
        w = w * smooth
        if idx is not None:
            w[:, idx] = 0
            smooth[idx] = float("inf")  # 1 / inf: the int8 path sees 0 there
        scale = w.abs().amax(1).clamp(min=1e-8) / 127
        # [out, in], passed transposed: oneDNN ran the 576x49152 head 3.1x faster at one token than with
        # a contiguous [in, out] copy, 1.7x at 32, and no slower elsewhere
        self.register_buffer("wq", (w / scale[:, None]).round().to(torch.int8).contiguous())
        self.register_buffer("w_scale", scale)
        self.register_buffer("inv_smooth", (1 / smooth).to(layers[0].weight.dtype))
        biases = [w.new_zeros(lin.out_features) if lin.bias is None else lin.bias.detach().float() for lin in layers]
        with_bias = any(lin.bias is not None for lin in layers)
        self.register_buffer("bias", torch.cat(biases) if with_bias else None)
        self.splits = [lin.out_features for lin in layers]
        self.cache = _Cache()  # set once: nn.Module's __setattr__ costs ~6 us a call, ~5 ms a decode step
        self.kernels = kernels.load()
        self.packed: kernels.Packed | None = None
        self._hold()

    def _hold(self) -> None:
        # With AVX-512 VNNI in the C loops (weights on the CPU) the buffer holds the weight packed for them in
        # place of [out, in]: one copy of the int8 weights either way. The tensors a call reads, as plain
        # attributes: a buffer's lookup through nn.Module costs ~1.5 us, ~2 ms a decode step. Refreshed
        # whenever the buffers are replaced (``_apply``: .to(), .float()).
        k, w, p = self.kernels, self.wq, self.packed
        vnni = k is not None and k.vnni and w.device.type == "cpu" and self.vnni
        if p is not None:
            p.weights = w  # the packed buffer, as ``_apply`` left it
            if not vnni:
                self.wq, self.packed = p.unpack(), None
        elif vnni:
            self.packed = kernels.Packed(w, self.w_outliers)
            self.wq = self.packed.weights
        p, wo = self.packed, None if self.w_outliers is None else self.w_outliers.float()
        if p is not None:  # the C loop's dtype
            bias = None if self.bias is None else self.bias.float()
            self.hot = _Hot(None, self.w_scale.float(), self.inv_smooth.float(), self.outliers, wo, bias, p)
        else:
            self.hot = _Hot(self.wq.t(), self.w_scale, self.inv_smooth, self.outliers, wo, self.bias)

    def _apply(self, fn: Any, recurse: bool = True) -> Any:
        out = super()._apply(fn, recurse)
        self._hold()
        return out

    def output(self, x: torch.Tensor, idx: int) -> torch.Tensor:
        c = self.cache
        version = -1 if x.is_inference() else x._version  # inference tensors keep no version counter
        if not (x is c.input and version == c.version and idx in c.pending):
            c.parts = list(self.compute(x).split(self.splits, -1))
            c.input, c.version, c.pending = x, version, set(range(len(self.splits)))
        c.pending.discard(idx)
        part = c.parts[idx]
        if not c.pending:
            c.input, c.parts = None, []
        return part

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        h, k = self.hot, self.kernels
        flat = x.reshape(-1, x.shape[-1])
        if h.packed is not None and k is not None:  # every step in one C call (kernels.c: lc_qlinear)
            y = k.qlinear(flat.float().contiguous(), h.inv_smooth, h.packed, h.w_scale, h.outliers, h.bias)
            return y.to(x.dtype).view(*x.shape[:-1], -1)
        few = flat.shape[0] <= kernels.ROWS or torch.get_num_threads() <= 2  # see kernels.py
        if k is not None and few and flat.dtype == h.inv_smooth.dtype == torch.float32:
            q, scale = k.quantise(flat.contiguous(), h.inv_smooth)  # the same bits as the torch ops, fewer calls
            y = k.dequantise(torch._int_mm(q, h.wq_t), scale, h.w_scale)  # type: ignore[arg-type]
        else:
            q, scale = kernels.torch_quantise(flat, h.inv_smooth)
            y = (torch._int_mm(q, h.wq_t) * scale).mul_(h.w_scale)  # type: ignore[arg-type]
        if h.outliers is not None and h.w_outliers is not None:
            y.addmm_(flat.index_select(1, h.outliers).float(), h.w_outliers)  # in place: one copy fewer
        if h.bias is not None:
            y.add_(h.bias)
        return y.to(x.dtype).view(*x.shape[:-1], -1)


class _Hot:
    __slots__ = ("bias", "inv_smooth", "outliers", "packed", "w_outliers", "w_scale", "wq_t")

    def __init__(self, wq_t: torch.Tensor | None, w_scale: torch.Tensor, inv_smooth: torch.Tensor,
                 outliers: torch.Tensor | None, w_outliers: torch.Tensor | None,
                 bias: torch.Tensor | None, packed: kernels.Packed | None = None) -> None:  # fmt: skip
        self.wq_t, self.w_scale, self.inv_smooth = wq_t, w_scale, inv_smooth
        self.outliers, self.w_outliers, self.bias, self.packed = outliers, w_outliers, bias, packed


class Int8Linear(torch.nn.Module):
    """One layer of a group: its columns of the group's product."""

    def __init__(self, group: Group, idx: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.group = [group]  # a list: the group is registered once, on the first layer
        if idx == 0:
            self.shared = group
        self.idx, self.in_features, self.out_features = idx, in_features, out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.group[0].output(x, self.idx)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 (group part {self.idx})"


def _linears(model: Any) -> dict[str, torch.nn.Linear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def _calibrate(model: Any, tokenizer: Any) -> tuple[list[list[str]], dict[str, torch.Tensor]]:
    """Groups of layers reading one input (in model order) and each layer's per-channel input maxima."""
    linears = _linears(model)
    stats: dict[str, torch.Tensor] = {}
    seen: list[tuple[torch.Tensor, list[str]]] = []  # inputs of the first pass, held so ids stay unique
    first = [True]

    def hook(name: str) -> Any:
        def pre(_mod: Any, args: tuple[Any, ...]) -> None:
            x = args[0].detach()
            amax = x.reshape(-1, x.shape[-1]).abs().amax(0).float()
            stats[name] = torch.maximum(stats[name], amax) if name in stats else amax
            if first[0]:
                for held, names in seen:
                    if held is args[0]:
                        names.append(name)
                        return
                seen.append((args[0], [name]))

        return pre

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in linears.items()]
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            for ids in _calibration_inputs(tokenizer):
                model(input_ids=ids.to(device))
                first[0] = False
    finally:
        for h in handles:
            h.remove()
    return [names for _, names in seen], stats


def _calibration_inputs(tokenizer: Any) -> list[torch.Tensor]:
    out = [tokenizer(CALIBRATION, return_tensors="pt").input_ids]
    if getattr(tokenizer, "chat_template", None):
        for q in CHAT:
            ids = tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                                tokenize=True, return_dict=False)  # fmt: skip
            out.append(torch.tensor([list(ids)]))
    return out


def _swap(model: Any, modules: dict[str, torch.nn.Module]) -> dict[str, torch.nn.Module]:
    """Put ``modules`` at their paths; returns what was there."""
    old = {}
    for path, module in modules.items():
        parent, _, child = path.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        old[path] = getattr(owner, child)
        setattr(owner, child, module)
    return old


def quantise(model: Any, tokenizer: Any) -> tuple[dict[str, torch.nn.Module], dict[str, torch.nn.Module], int]:
    """Int8 layers for every linear layer of ``model`` (not yet in it), the float layers they replace,
    and the number of groups."""
    groups, stats = _calibrate(model, tokenizer)
    linears = _linears(model)
    new: dict[str, torch.nn.Module] = {}
    for names in groups:
        layers = [linears[n] for n in names]
        if len({lin.in_features for lin in layers}) != 1 or any(lin.weight.dim() != 2 for lin in layers):
            continue
        group = Group(layers, stats[names[0]])  # the head needs its float channels too: agreement 0.93 without
        for i, (name, lin) in enumerate(zip(names, layers, strict=True)):
            new[name] = Int8Linear(group, i, lin.in_features, lin.out_features)
    return new, {n: linears[n] for n in new}, len(groups)


def _own_memory(model: Any) -> None:
    """The float tensors left (embeddings, norms) copied out of the model file's mapping, so the float
    weights int8 replaced leave memory with it, and freed heap given back (SmolLM2-135M: RSS -400 MiB)."""
    import contextlib
    import ctypes

    with torch.no_grad():
        for p in model.parameters():
            p.data = p.data.clone()
    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def identity(model: Any, tokenizer: Any) -> str:
    """What the quality check's figures depend on: the model's weights (sha256 of every tensor, ~0.4 s
    for SmolLM2-135M), the check's token ids under this tokenizer and this module's code."""
    import hashlib

    h = hashlib.sha256(Path(__file__).read_bytes() + Path(int8_check.__file__).read_bytes() + kernels.SOURCE.encode())
    seen = set()
    for name, t in model.state_dict().items():
        if t.data_ptr() in seen:  # tied weights: once
            continue
        seen.add(t.data_ptr())
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().data)
    ids = [x.tolist() for x in _calibration_inputs(tokenizer)] + [tokenizer(int8_check.CHECK).input_ids]
    if getattr(tokenizer, "chat_template", None):
        ids += [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                              add_generation_prompt=True) for q in int8_check.ANSWERS]  # fmt: skip
    h.update(repr(ids).encode())
    return h.hexdigest()


def apply(
    model: Any, tokenizer: Any, weights: str, what: str = "", max_increase: float = MAX_NLL_INCREASE,
    min_agreement: float = MIN_AGREEMENT, cache_dir: Path | None = None,
) -> Report | None:  # fmt: skip
    """Quantise ``model`` in place when ``weights`` asks for it: ``int8`` always, ``auto`` when the
    check text's NLL rises by at most ``max_increase`` and int8 makes the float model's next-token choice
    on its own chat answers at least ``min_agreement`` of the time; returns what was measured (None: float).
    The figures are measured once per ``identity`` and machine and kept under ``cache_dir``/hardware/."""
    if weights == "float":
        return None
    from runtime.hardware import cached

    what_id = identity(model, tokenizer)  # of the float model, before any layer is swapped
    new, old, n_groups = quantise(model, tokenizer)
    if not new:
        return None

    def measure() -> dict[str, float]:
        answers = int8_check.answers(model, tokenizer)
        figures = {"nll_float": int8_check.nll(model, tokenizer), "agreement": 1.0}
        float_choices = int8_check.choices(model, answers) if answers else None
        _swap(model, new)
        figures["nll_int8"] = int8_check.nll(model, tokenizer)
        if answers and float_choices is not None:
            figures["agreement"] = float((int8_check.choices(model, answers) == float_choices).float().mean())
        _swap(model, old)
        return figures

    # measured once per model, tokenizer, this module's numerics and machine (2-7 s for SmolLM2-135M)
    fig = cached("int8-check", measure, {"nll_float", "nll_int8", "agreement"}, cache_dir, what_id)
    before, after = fig["nll_float"], fig["nll_int8"]
    report = Report(True, len(new), n_groups, before, after, "", fig["agreement"])
    measured = f"check text NLL {before:.3f} -> {after:.3f} ({report.increase:+.1%}), next-token agreement with float "
    measured += f"on chat answers {report.agreement:.1%}"
    if weights == "auto" and (report.increase > max_increase or report.agreement < min_agreement):
        report.kept = False
        limits = f"limits +{max_increase:.0%}, {min_agreement:.0%}"
        report.reason = f"int8 too far from float ({measured}; {limits}): float kept"
    else:
        _swap(model, new)
        old.clear()  # the float layers (the check's closure holds this dict): freed before the heap is trimmed
        _own_memory(model)
        report.reason = f"int8 weights and activations: {measured}"
    log.info("%s: %s, %d layers in %d groups", what or "model", report.reason, report.layers, report.groups)
    return report
