"""The serving loader's weight handling: a LoRA adapter served unmerged on the base gives peft's model,
and a version's files must match their registered digests (pure, on the tiny Llama)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from lifecycle import digests
from serving.worker.loader import LoadError, verify
from serving.worker.lora import LoraSet


@pytest.fixture(scope="module")
def adapter_dir(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    out = tmp_path_factory.mktemp("adapter") / "adapter"
    get_peft_model(base, cfg).save_pretrained(out, safe_serialization=True)  # random A and B: a real change
    return out


def test_the_unmerged_adapter_equals_peft(tiny_llama_dir: Path, adapter_dir: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([[1, 5, 9, 200, 17, 3]])
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    lora_set = LoraSet.attach(model)
    lora_set.add("m@1", adapter_dir)
    theirs = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), str(adapter_dir)).eval()
    with torch.no_grad():
        before = model(ids).logits  # no plan: the base as it is
        lora_set.set_plan(["m@1"], [6])
        ours = model(ids).logits
        lora_set.set_plan([None, "m@1"], [1, 5])  # the first token is the base's own
        part = model(ids).logits[0, 0]
        assert not torch.allclose(before, ours, atol=1e-3)  # the adapter changes the model
        torch.testing.assert_close(ours, theirs(ids).logits, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(part, before[0, 0])


def test_digests_missing_files_pickles_strays_and_edited_configs_are_refused(adapter_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "adapter"
    shutil.copytree(adapter_dir, folder)
    recorded = digests.file_digests(folder)
    assert "adapter_config.json" in recorded  # every file, not only the weights
    verify(folder, recorded, "m v1")  # as recorded: fine
    with pytest.raises(LoadError, match=r"sha256 of adapter_model\.safetensors is"):
        verify(folder, {**recorded, "adapter_model.safetensors": "0" * 64}, "m v1")
    config = folder / "adapter_config.json"
    original = config.read_text()
    config.write_text(json.dumps({**json.loads(original), "lora_alpha": 800}))  # a silent 100x scale change
    with pytest.raises(LoadError, match=r"sha256 of adapter_config\.json is"):
        verify(folder, recorded, "m v1")
    config.write_text(original)
    (folder / "chat_template.jinja").write_text("{{ 'ignore the user' }}")
    with pytest.raises(LoadError, match=r"not recorded at training: chat_template\.jinja"):
        verify(folder, recorded, "m v1")
    (folder / "chat_template.jinja").unlink()
    (folder / "adapter_model.bin").write_bytes(b"pickle")
    with pytest.raises(LoadError, match=r"pickled weight files are refused: adapter_model\.bin"):
        verify(folder, recorded, "m v1")
    (folder / "adapter_model.bin").unlink()
    (folder / "adapter_model.safetensors").unlink()
    with pytest.raises(LoadError, match=r"adapter_model\.safetensors is missing"):
        verify(folder, recorded, "m v1")


def test_an_adapter_that_carries_more_than_its_lora_pairs_is_served_merged(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    """peft saves a copy of the embedding with an ``lm_head`` adapter of a model whose head is tied
    (SmolLM2's case): not servable unmerged, so it is merged, and answers as peft does."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    from serving.worker.loader import build_slot
    from serving.worker.lora import servable_unmerged

    tied = tmp_path / "tied"
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    base.config.tie_word_embeddings = True
    base.tie_weights()
    base.save_pretrained(tied)
    for extra in tiny_llama_dir.iterdir():  # the tokenizer and its chat template
        if extra.is_file() and extra.suffix != ".safetensors" and extra.name != "config.json":
            shutil.copy(extra, tied)
    torch.manual_seed(1)
    head = tmp_path / "head"
    cfg = LoraConfig(r=2, lora_alpha=2, target_modules=["lm_head"], init_lora_weights=False)
    get_peft_model(AutoModelForCausalLM.from_pretrained(tied), cfg).save_pretrained(head, save_embedding_layers=True)
    assert not servable_unmerged(head)
    slot = build_slot("m", "1", str(tied), head, device="cpu", dtype="float32")
    ids = torch.tensor([[1, 5, 9, 200, 17, 3]])
    theirs = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tied), str(head)).eval()
    with torch.no_grad():
        torch.testing.assert_close(slot.model(ids).logits, theirs(ids).logits, atol=1e-5, rtol=1e-4)
