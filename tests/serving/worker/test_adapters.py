"""Many LoRA adapters on one resident base: eight versions answered in one batch, each token for
token what that adapter gives merged into the base alone; adapters dropped and reloaded; the memory
they add is theirs, not a copy of the base."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from serving.worker.engine import Delta, Engine, SamplingParams
from serving.worker.loader import attach_adapter, build_base, untie_head
from serving.worker.lora import AdapterError, LoraSet

QUESTIONS = ["What is the capital of France?", "hi", "Name three colours.", "2+2?", "Tell me a story.",
             "Why is the sea salty?", "Count to five.", "What is a cat?"]  # fmt: skip


LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_adapter(base_dir: Path, out: Path, seed: int, r: int, head: bool = False) -> Path:
    """A random (not zero-initialised) LoRA adapter over every linear layer (and the output head with
    ``head``: its rows are the only ones the head sees in a prefill), saved as peft does."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    targets: Any = [*LINEAR, "lm_head"] if head else "all-linear"
    cfg = LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets, init_lora_weights=False)
    peft_model = get_peft_model(model, cfg)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.mul_(0.5)
    peft_model.save_pretrained(out, save_embedding_layers=False)
    return out


@pytest.fixture(scope="module")
def adapters(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("adapters")
    return [make_adapter(tiny_llama_dir, root / f"a{i}", seed=i, r=(4, 8)[i % 2], head=i in (2, 5)) for i in range(8)]


def merged_greedy(base_dir: Path, adapter: Path, tok: Any, question: str, n: int) -> list[int]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    untie_head(model)  # the tiny Llama's head is tied: merged into it, an lm_head adapter would change the inputs
    model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload().eval()
    text = tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)
    enc = tok(text, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**enc, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return [int(t) for t in out[0, enc["input_ids"].shape[1] :]]


def test_eight_adapters_in_one_batch_each_equal_to_its_adapter_merged_alone(
    tiny_llama_dir: Path, adapters: list[Path]
) -> None:
    model, tok = build_base(str(tiny_llama_dir), device="cpu", dtype="float32")
    base_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    slots = [attach_adapter("m", str(i + 1), model, tok, a) for i, a in enumerate(adapters)]
    lora_set = LoraSet.attach(model)
    assert sorted(lora_set.keys) == [f"m@{i + 1}" for i in range(8)]
    assert sum(p.numel() * p.element_size() for p in model.parameters()) == base_bytes  # the base is not copied
    engine = Engine(max_batch=8)
    engine.swap(slots[0])
    outputs: dict[int, list[str]] = {i: [] for i in range(8)}
    seen_batch = 0
    for i, (slot, q) in enumerate(zip(slots, QUESTIONS, strict=True)):
        slot.eos_ids = set()  # a fixed length, as generate with min_new_tokens

        def sink(d: Delta, i: int = i) -> None:
            outputs[i].append(d.version)

        engine.submit(
            messages=[{"role": "user", "content": q}], params=SamplingParams(max_tokens=10), sink=sink, slot=slot
        )
    reqs = [r for g in engine._groups.values() for r in g.waiting]
    while engine.queued() or engine.running():
        engine.step()
        seen_batch = max(seen_batch, engine.running())
    assert seen_batch == 8  # all eight adapters decoded together
    assert len({tuple(r.out_ids) for r in reqs}) == 8  # and they do differ
    for i, req in enumerate(reqs):
        assert set(outputs[i]) == {str(i + 1)}
        assert req.out_ids == merged_greedy(tiny_llama_dir, adapters[i], tok, QUESTIONS[i], 10), f"adapter {i + 1}"
    # A later request starts from its own adapter's cached prefix (the system prompt), not another's.
    before = engine.prefix_tokens
    again = engine.submit(messages=[{"role": "user", "content": QUESTIONS[0]}], params=SamplingParams(max_tokens=10),
                          slot=slots[1])  # fmt: skip
    while engine.queued() or engine.running():
        engine.step()
    assert engine.prefix_tokens > before
    assert again.out_ids == merged_greedy(tiny_llama_dir, adapters[1], tok, QUESTIONS[0], 10)
    # Requests of the base itself (no adapter) in a batch with adapters get the base's own output.
    base_slot = type(slots[0])("m", "base", model, tok)
    base_slot.eos_ids = set()
    plain = engine.submit(prompt="Once upon a time", params=SamplingParams(max_tokens=8), slot=base_slot)
    engine.submit(prompt="Once upon a time", params=SamplingParams(max_tokens=8), slot=slots[3])
    while engine.queued() or engine.running():
        engine.step()
    enc = tok("Once upon a time", return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        lora_set.plan = None
        ref = model.generate(**enc, max_new_tokens=8, min_new_tokens=8, do_sample=False)[0, enc["input_ids"].shape[1] :]
    assert plain.out_ids == ref.tolist()


def test_adapters_are_removed_and_refused_by_name(tiny_llama_dir: Path, adapters: list[Path], tmp_path: Path) -> None:
    model, _ = build_base(str(tiny_llama_dir), device="cpu", dtype="float32")
    lora_set = LoraSet.attach(model)
    size = lora_set.add("m@1", adapters[0])
    assert 0 < size < sum(p.numel() * p.element_size() for p in model.parameters()) / 10
    lora_set.remove("m@1")
    assert not lora_set.keys and all(not layer.adapters for layer in lora_set.layers.values())
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "use_dora": true}')
    with pytest.raises(AdapterError, match="not a plain LoRA adapter"):
        lora_set.add("m@2", bad)
