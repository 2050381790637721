"""The fused decode step (serving/worker/fused.py) computes what the model's modules compute: the same
greedy tokens as the Hugging Face module path on an int8 SmolLM2 (where an ulp of difference would
flip a rounding of the per-token quantisation), with LoRA adapters mixed in one batch; its C loops give
Hugging Face's RMSNorm and rotary embedding bit for bit; models it cannot run say why and keep the
module path. (On a float model, tests/serving/worker/test_engine.py compares it with HF ``generate``.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from serving.worker import fused, int8, kernels
from serving.worker.engine import Engine, ModelSlot, SamplingParams
from serving.worker.loader import attach_adapter, build_base
from tests.serving.worker.test_adapters import make_adapter

QUESTIONS = ["What is the capital of France?", "Name three colours.", "Write a haiku about rain.", "2+2?", "hi"]


@pytest.fixture(scope="module")
def smol_int8(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    model, tok = build_base(str(smollm2_dir), device="cpu", dtype="float32")
    report = int8.apply(model, tok, "int8", "smol", cache_dir=tmp_path_factory.mktemp("cache"))
    assert report is not None and report.kept
    return model, tok


def generate(slots: list[ModelSlot], questions: list[str], fast: bool, n: int = 16) -> tuple[list[str], bool]:
    """Every question at once (slot i % len(slots)), greedy: the texts, and whether the fused step ran."""
    eng = Engine(max_batch=8)
    eng.swap(slots[0])
    texts = [""] * len(questions)

    def sink(i: int) -> Any:
        def put(d: Any) -> None:
            texts[i] += d.text

        return put

    for i, q in enumerate(questions):
        eng.submit(messages=[{"role": "user", "content": q}], params=SamplingParams(max_tokens=n), sink=sink(i),
                   slot=slots[i % len(slots)])  # fmt: skip
    used = False
    for group in eng._groups.values():
        used |= group.fast is not None
        if not fast:
            group.fast = None
    while eng.queued() or eng.running():
        eng.step()
    return texts, used


def test_the_fused_step_gives_the_module_path_tokens_on_an_int8_model(smol_int8: tuple[Any, Any]) -> None:
    model, tok = smol_int8
    assert fused.why_not(model) == ""
    slot = ModelSlot("m", "1", model, tok)
    got, used = generate([slot], QUESTIONS, fast=True)
    want, _ = generate([slot], QUESTIONS, fast=False)
    assert used and got == want and all(t.strip() for t in got)


def test_lora_adapters_mixed_in_a_batch_add_their_deltas_in_the_fused_step(
    smol_int8: tuple[Any, Any], smollm2_dir: Path, tmp_path: Path
) -> None:
    model, tok = smol_int8
    slots = [ModelSlot("m", "base", model, tok)]
    for i in range(2):
        path = make_adapter(smollm2_dir, tmp_path / f"a{i}", seed=20 + i, r=4)
        slots.append(attach_adapter("m", str(i + 1), model, tok, path))
    assert fused.why_not(model) == ""  # LoRA wrappers keep their int8 base
    questions = QUESTIONS + QUESTIONS[:1]  # the first question under the base and the second adapter
    got, used = generate(slots, questions, fast=True)
    want, _ = generate(slots, questions, fast=False)
    assert used and got == want
    assert got[0] != got[5]  # the same question under the base and under adapter 2: its deltas were added


def test_the_c_loops_match_hugging_faces_norm_and_rotation() -> None:
    from transformers.models.llama.modeling_llama import LlamaRMSNorm, apply_rotary_pos_emb

    k = kernels.load()
    assert k is not None
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(7, 576, generator=gen) * 3
    norm = LlamaRMSNorm(576, eps=1e-5)
    norm.weight.data = torch.randn(576, generator=gen)
    with torch.no_grad():
        want = norm(x)
    assert torch.equal(k.rmsnorm(x, norm.weight.detach(), 1e-5), want)
    packed = torch.randn(7, 9 * 64 + 2 * 3 * 64, generator=gen)  # q, k, v side by side, as a group's product
    cos, sin = torch.randn(7, 64, generator=gen), torch.randn(7, 64, generator=gen)
    q, key = packed[:, : 9 * 64], packed[:, 9 * 64 : 12 * 64]
    q_ref, k_ref = apply_rotary_pos_emb(q.reshape(7, 9, 1, 64), key.reshape(7, 3, 1, 64), cos[:, None], sin[:, None])
    v_before = packed[:, 12 * 64 :].clone()
    k.rope_(q, cos, sin, 64)
    k.rope_(key, cos, sin, 64)
    assert torch.equal(q, q_ref.reshape(7, -1)) and torch.equal(key, k_ref.reshape(7, -1))
    assert torch.equal(packed[:, 12 * 64 :], v_before)  # strided rows: nothing outside the view is written


def test_models_the_fused_step_cannot_run_keep_the_module_path(tiny_llama_dir: Path) -> None:
    model, _ = build_base(str(tiny_llama_dir), device="cpu", dtype="float32")
    assert fused.why_not(model) == "" and fused.Decoder.build(model) is not None
    model.model.layers[1].mlp.act_fn = torch.nn.GELU()
    assert "GELU activation" in fused.why_not(model) and fused.Decoder.build(model) is None
    model, _ = build_base(str(tiny_llama_dir), device="cpu", dtype="bfloat16")
    assert "float32 on CPU only" in fused.why_not(model) and fused.Decoder.build(model) is None
