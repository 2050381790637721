"""Base models: the SmolLM2 folder pulled from the shipped GGUF, and the tiny random test Llama."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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


def test_your_own_model_folder_gguf_file_or_hub_id(
    smollm2_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from training.base_model import ModelError, build_tiny, gguf_path, pull_model

    cache = tmp_path / "cache"
    tiny = build_tiny("qwen2", smollm2_dir, tmp_path / "my-qwen")
    pulled = pull_model(str(tiny), cache, name="acme/qwen-tiny")
    assert pulled.path == cache / "acme--qwen-tiny" and pulled.parameters > 0
    meta = json.loads((pulled.path / MARKER).read_text())
    assert meta["source"] == str(tiny) and len(meta["config_sha256"]) == 64
    assert resolve_base_model("acme/qwen-tiny", cache) == str(pulled.path)  # usable as LIFECYCLE_BASE_MODEL
    (tiny / "config.json").write_text("{}")  # the cached copy no longer depends on the source
    assert pull_model(str(tiny), cache, name="acme/qwen-tiny").path == pulled.path  # cached: nothing redone

    gguf = pull_model(str(gguf_path()), cache, name="smol-from-gguf")
    assert gguf.check_text and json.loads((gguf.path / MARKER).read_text())["source"].endswith(".gguf")

    (tmp_path / "not-a-model").mkdir()
    with pytest.raises(ModelError, match="not a Hugging Face model folder"):
        pull_model(str(tmp_path / "not-a-model"), cache)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match=r"no-such-org/no-such-model: not a local folder or \.gguf file"):
        pull_model("no-such-org/no-such-model", cache)
    assert not list(cache.glob("*.partial"))
