"""Int8 weights and activations on a resident base: layers reading one input multiply once, the output
stays close to the float model's, ``auto`` keeps float when the measured quality loss is too large,
and LoRA adapters add their float delta on top, batched as on a float base."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch

from serving.worker import int8, int8_check
from serving.worker.engine import Delta, Engine, ModelSlot, SamplingParams
from serving.worker.loader import attach_adapter, build_base
from serving.worker.lora import LoraSet
from tests.serving.worker.test_adapters import make_adapter


def logits(model: Any, tok: Any, text: str) -> torch.Tensor:
    ids = tok(text, return_tensors="pt").input_ids
    with torch.no_grad():
        return model(input_ids=ids).logits[0]


def test_every_linear_layer_becomes_int8_grouped_by_input_and_close_to_float(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    model, tok = build_base(str(tiny_llama_dir), device="cpu", dtype="float32")
    ref = copy.deepcopy(model)
    report = int8.apply(model, tok, "int8", "tiny", cache_dir=tmp_path)  # measured here, not read from a cache
    assert report is not None and report.kept
    assert not [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]  # every one replaced
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    assert attn.q_proj.group[0] is attn.k_proj.group[0] is attn.v_proj.group[0]  # one input, one product
    assert mlp.gate_proj.group[0] is mlp.up_proj.group[0]
    assert attn.o_proj.group[0] is not attn.q_proj.group[0] and mlp.down_proj.group[0] is not mlp.up_proj.group[0]
    assert attn.q_proj.group[0].wq.dtype == torch.int8
    got, want = logits(model, tok, "The cat sat on the mat."), logits(ref, tok, "The cat sat on the mat.")
    assert not torch.equal(got, want)  # it did quantise
    assert ((got - want).norm() / want.norm()).item() < 0.05
    assert abs(report.increase) < 0.02 and report.nll_float == int8_check.nll(ref, tok) and report.agreement > 0.5


def test_each_layer_of_a_group_gets_its_own_columns_whatever_order_it_asks(tiny_llama_dir: Path) -> None:
    model, tok = build_base(str(tiny_llama_dir), device="cpu", dtype="float32")
    attn = model.model.layers[1].self_attn
    q, k, v = attn.q_proj, attn.k_proj, attn.v_proj
    int8.apply(model, tok, "int8")
    x, other = torch.randn(3, 5, q.in_features), torch.randn(3, 5, q.in_features)
    alone = [layer(x.clone()) for layer in (q, k, v)]  # each computed from a fresh input
    assert [tuple(t.shape) for t in alone] == [(3, 5, q.out_features), (3, 5, k.out_features), (3, 5, v.out_features)]
    got_v, got_q = v(x), q(x)
    got_other = k(other)  # another input between: computed for it, not the cached product of x
    assert torch.equal(got_v, alone[2]) and torch.equal(got_q, alone[0]) and torch.equal(got_other, k(other.clone()))
    assert torch.equal(k(x), alone[1])


def test_auto_keeps_the_float_layers_when_int8_costs_more_than_allowed(tiny_llama_dir: Path) -> None:
    model, tok = build_base(str(tiny_llama_dir), device="cpu", dtype="float32")
    before = logits(model, tok, "hello there")
    report = int8.apply(model, tok, "auto", "tiny", max_increase=-1.0)  # nothing is good enough
    assert report is not None and not report.kept and "float kept" in report.reason
    assert len([m for m in model.modules() if isinstance(m, torch.nn.Linear)]) == 2 * 7 + 1
    assert torch.equal(logits(model, tok, "hello there"), before)
    assert int8.apply(model, tok, "float") is None
    strict = int8.apply(model, tok, "auto", "tiny", min_agreement=1.01)  # NLL fine, next-token choices not
    assert strict is not None and not strict.kept and "next-token agreement with float on chat answers" in strict.reason
    assert 0 < strict.agreement <= 1 and torch.equal(logits(model, tok, "hello there"), before)


def test_adapters_on_an_int8_base_add_their_float_delta_batched_together(tiny_llama_dir: Path, tmp_path: Path) -> None:
    model, tok = build_base(str(tiny_llama_dir), device="cpu", dtype="float32")
    int8.apply(model, tok, "int8")
    bare = model.model.layers[0].self_attn.q_proj
    x = torch.randn(1, 4, bare.in_features)
    base_out = bare(x)
    paths = [make_adapter(tiny_llama_dir, tmp_path / f"a{i}", seed=10 + i, r=4) for i in range(2)]
    slots = [attach_adapter("m", str(i + 1), model, tok, p) for i, p in enumerate(paths)]
    lora_set = LoraSet.attach(model)
    wrapped = model.model.layers[0].self_attn.q_proj
    a, b, scale = wrapped.adapters["m@1"]
    lora_set.set_plan(["m@1"], [4])
    assert torch.allclose(wrapped(x), base_out + (x @ a.T @ b.T) * scale, atol=1e-5)
    lora_set.set_plan([None], [4])

    engine = Engine(max_batch=4)
    engine.swap(slots[0])
    done: dict[int, tuple[str, int, str]] = {}
    for i in range(4):
        slots[i % 2].eos_ids = set()

        def sink(d: Delta, i: int = i) -> None:
            if d.finish_reason:
                done[i] = (d.finish_reason, d.completion_tokens, d.version)

        engine.submit(messages=[{"role": "user", "content": f"question {i}"}], params=SamplingParams(max_tokens=6),
                      sink=sink, slot=slots[i % 2])  # fmt: skip
    while engine.queued() or engine.running():
        engine.step()
    assert done == {i: ("length", 6, str(i % 2 + 1)) for i in range(4)}  # both adapters in one batch


def test_the_quality_check_is_measured_once_per_model_and_machine_and_its_figures_decide(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    model, tok = build_base(str(tiny_llama_dir), device="cpu", dtype="float32")
    first = int8.apply(model, tok, "auto", "tiny", cache_dir=tmp_path)
    assert first is not None and first.kept
    files = list((tmp_path / "hardware").glob("int8-check-*.json"))
    assert len(files) == 1
    figures = json.loads(files[0].read_text())
    assert figures == {"nll_float": first.nll_float, "nll_int8": first.nll_int8, "agreement": first.agreement}
    files[0].write_text(json.dumps({**figures, "agreement": 0.5}))  # the kept figures are what decides
    again, _ = build_base(str(tiny_llama_dir), device="cpu", dtype="float32")
    second = int8.apply(again, tok, "auto", "tiny", cache_dir=tmp_path)
    assert second is not None and not second.kept and second.agreement == 0.5 and "float kept" in second.reason
    assert isinstance(again.model.layers[0].mlp.up_proj, torch.nn.Linear)  # float layers left in place
    with torch.no_grad():  # other weights: measured anew
        again.model.layers[0].mlp.up_proj.weight[0, 0] += 0.01
    third = int8.apply(again, tok, "auto", "tiny", cache_dir=tmp_path)
    assert third is not None and third.kept and third.agreement > 0.5
    assert len(list((tmp_path / "hardware").glob("int8-check-*.json"))) == 2


def test_a_bf16_base_given_int8_weights_runs_its_activations_in_float32_and_a_float_one_stays_bf16(
    tiny_llama_dir: Path,
) -> None:
    from serving.worker import fused
    from serving.worker.loader import quantise

    model, tok = build_base(str(tiny_llama_dir), device="cpu", dtype="bfloat16")
    reason = quantise(model, tok, "int8", "tiny")
    assert "activations in float32" in reason, reason
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # norms and embeddings: float32
    assert model.model.layers[0].self_attn.q_proj.group[0].wq.dtype == torch.int8
    assert fused.why_not(model) == ""  # the fused decoder takes its steps
    plain, tok = build_base(str(tiny_llama_dir), device="cpu", dtype="bfloat16")
    assert quantise(plain, tok, "float", "tiny") == "float weights as configured"
    assert {p.dtype for p in plain.parameters()} == {torch.bfloat16}


def test_an_int8_base_keeps_its_keys_and_values_in_float16_and_a_float_base_in_float32(tiny_llama_dir: Path) -> None:
    stores = {}
    for weights in ("int8", "float"):
        model, tok = build_base(str(tiny_llama_dir), device="cpu", dtype="float32")
        int8.apply(model, tok, weights)
        engine = Engine(max_batch=2)
        engine.swap(ModelSlot("m", "1", model, tok))
        engine.submit(messages=[{"role": "user", "content": "hello"}], params=SamplingParams(max_tokens=3))
        engine.step()  # admitted and prefilled: the storage exists
        group = next(iter(engine._groups.values()))
        stores[weights] = {t.dtype for t in (*group.store.k.values(), *group.store.v.values())}
        while engine.queued() or engine.running():
            engine.step()
    assert stores == {"int8": {torch.float16}, "float": {torch.float32}}
