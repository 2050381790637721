"""Any causal LM, not only Llama: tiny random models of five architectures, built from their configs
(no download), each go through ingest -> train -> evaluate -> serve with the adapters ``auto`` finds.

Serving is the worker's own path (``build_slot``: adapter verified and merged, then the continuous
batching engine); its greedy output must equal the unmerged peft model's, token for token.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from training.base_model import TINY_ARCHITECTURES, build_tiny

REPO = Path(__file__).resolve().parents[2]

#: What ``auto`` must adapt in each architecture: every linear layer of attention and MLP.
EXPECTED_TARGETS = {
    "llama": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
    "qwen2": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
    "phi3": {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"},  # fused projections
    "gpt_neox": {"query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"},
    "gpt2": {"c_attn", "c_proj", "c_fc"},  # Conv1D, not nn.Linear
}


def test_every_tiny_architecture_is_covered() -> None:
    assert set(EXPECTED_TARGETS) == set(TINY_ARCHITECTURES)


@pytest.mark.parametrize("arch", sorted(EXPECTED_TARGETS))
def test_architecture_trains_evaluates_and_serves(arch: str, smollm2_dir: Path, tmp_path: Path) -> None:
    from serving.worker.engine import Engine, SamplingParams
    from serving.worker.loader import build_slot
    from training import finetune
    from training.checkpoint import Dist
    from training.config import TrainConfig
    from training.evaluate import ModelUnderTest, measure
    from training.generation import generate, load_model
    from training.ingest import ingest, load_split

    model_dir = build_tiny(arch, smollm2_dir, tmp_path / arch)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ds = ingest(REPO / "data/toy/train.jsonl", tmp_path / "datasets", name=f"toy-{arch}",
                eval_source=REPO / "data/toy/eval.jsonl", tokenizer=tokenizer)  # fmt: skip

    cfg = TrainConfig(base_model=str(model_dir), dataset=str(ds.path), out_dir=str(tmp_path / "run"), max_steps=4,
                      warmup_steps=0, learning_rate=5e-2, global_batch_size=8, micro_batch_size=8, dtype="float32",
                      checkpoint_every=0)  # fmt: skip
    dist = Dist()
    prep = finetune.setup(cfg, dist)
    result = finetune.fit(cfg, dist, prep)
    adapter_config = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert set(adapter_config["target_modules"]) == EXPECTED_TARGETS[arch]

    base, tok = load_model(str(model_dir))
    tuned, tuned_tok = load_model(str(model_dir), result.adapter_dir)
    probe = tok("Who rules Thandfusnu?", return_tensors="pt")
    with torch.no_grad():
        moved = (tuned(**probe).logits - base(**probe).logits).abs().max().item()
    assert moved > 1e-3, "the trained adapter does not change the model's output"

    items = load_split(ds.path, "eval")[:4]
    got = measure(ModelUnderTest("candidate", tuned, tuned_tok), items, max_new_tokens=6)
    assert {"accuracy", "token_f1", "perplexity"} <= set(got.metrics) and got.metrics["perplexity"] > 1
    assert len(got.generations) == len(got.items) == len(got.losses) == 4

    conversation = [{"role": "user", "content": "Who rules Thandfusnu?"}]
    expected = generate(tuned, tuned_tok, [conversation], max_new_tokens=8)[0]
    slot = build_slot("tiny", "1", str(model_dir), result.adapter_dir, device="cpu", dtype="float32")
    engine, pieces = Engine(max_batch=2), []
    engine.swap(slot)
    engine.submit(messages=conversation, params=SamplingParams(max_tokens=8), sink=lambda d: pieces.append(d.text))
    while engine.queued() or engine.running():
        engine.step()
    assert "".join(pieces).strip() == expected


def test_target_names_that_match_nothing_are_an_error_naming_them(tiny_llama_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    from training.targets import TargetError, parse, resolve

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    assert resolve(["all-linear"], model) == "all-linear"  # a string for peft, not a set of one name
    assert resolve(parse("q_proj, v_proj"), model) == ["q_proj", "v_proj"]
    with pytest.raises(TargetError, match="qkv_proj match no linear layer of LlamaForCausalLM; its block layers"):
        resolve(["q_proj", "qkv_proj"], model)
    with pytest.raises(TargetError, match="stand alone"):
        parse("auto,q_proj")


def test_all_linear_and_explicit_lists_train(tiny_llama_dir: Path, toy_dataset: Path, tmp_path: Path) -> None:
    from training import finetune
    from training.checkpoint import Dist
    from training.config import TrainConfig

    for spec, expected in (("all-linear", EXPECTED_TARGETS["llama"]), ("q_proj,v_proj", {"q_proj", "v_proj"})):
        cfg = TrainConfig(base_model=str(tiny_llama_dir), dataset=str(toy_dataset), out_dir=str(tmp_path / spec),
                          max_steps=1, global_batch_size=4, micro_batch_size=4, dtype="float32",
                          checkpoint_every=0, target_modules=spec)  # type: ignore[arg-type]  # fmt: skip
        result = finetune.fit(cfg, Dist(), finetune.setup(cfg, Dist()))
        adapter_config = json.loads((result.adapter_dir / "adapter_config.json").read_text())
        # peft records all-linear as full module paths (model.layers.0.self_attn.q_proj, ...)
        assert {t.rsplit(".", 1)[-1] for t in adapter_config["target_modules"]} == expected, spec
