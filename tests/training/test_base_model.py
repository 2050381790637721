"""Base models: the SmolLM2 folder pulled from the shipped GGUF, and the tiny random test Llama."""

from __future__ import annotations

import json
from pathlib import Path

from training.base_model import CHECK_PROMPT, MARKER, build_tiny_llama, greedy_text, resolve_base_model


def test_pulled_model_is_a_standard_hf_folder_that_generates(smollm2_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    names = {p.name for p in smollm2_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pkl", ".gguf")) for n in names)
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert "quantization_config" not in config

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir).eval()
    text = greedy_text(model, tokenizer, CHECK_PROMPT)
    assert text == json.loads((smollm2_dir / MARKER).read_text())["check_text"]
    assert "Paris" in text  # the dequantised weights still know things


def test_tiny_llama_is_seeded_small_and_shares_the_tokenizer(smollm2_dir: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    a = build_tiny_llama(smollm2_dir, tmp_path / "a", seed=0)
    b = build_tiny_llama(smollm2_dir, tmp_path / "b", seed=0)
    c = build_tiny_llama(smollm2_dir, tmp_path / "c", seed=1)
    ma, mb, mc = (AutoModelForCausalLM.from_pretrained(p) for p in (a, b, c))
    params = sum(p.numel() for p in ma.parameters())
    assert 1e6 < params < 10e6
    wa, wb, wc = (m.model.layers[0].mlp.up_proj.weight for m in (ma, mb, mc))
    assert torch.equal(wa, wb)
    assert not torch.equal(wa, wc)
    assert AutoTokenizer.from_pretrained(a).get_vocab() == AutoTokenizer.from_pretrained(smollm2_dir).get_vocab()
    assert isinstance(greedy_text(ma.eval(), AutoTokenizer.from_pretrained(a), "Hello", max_new_tokens=4), str)


def test_resolve_prefers_local_folders(smollm2_dir: Path, tmp_path: Path) -> None:
    assert resolve_base_model(str(tmp_path), tmp_path / "models") == str(tmp_path)
    assert resolve_base_model("HuggingFaceTB/SmolLM2-135M-Instruct", smollm2_dir.parent) == str(smollm2_dir)
    assert resolve_base_model("meta-llama/Llama-3.2-1B", smollm2_dir.parent) == "meta-llama/Llama-3.2-1B"
