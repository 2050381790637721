"""The fused LoRA forward/backward computes what peft computes: same loss, same adapter gradients,
with and without dropout, in float32 and under bf16 autocast; other adapter states fall back."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from training.batching import collate, encode_chat
from training.config import DEFAULT_TARGETS, TrainConfig
from training.finetune import AssistantLoss, attention_kernel
from training.fused_lora import fuse_lora, unfuse_lora


def _peft(tiny_llama_dir: Path, dropout: float, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=dtype, attn_implementation="eager")
    torch.manual_seed(0)
    cfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=dropout, target_modules=list(DEFAULT_TARGETS))
    model = get_peft_model(base, cfg)
    with torch.no_grad():  # peft starts B at zero; give it values so B's path is exercised
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    return model


def _batch(tiny_llama_dir: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    chats = [
        [{"role": "user", "content": "Who rules Thandfusnu?"}, {"role": "assistant", "content": "King Quonthox."}],
        [{"role": "user", "content": "When was the Glass Treaty signed, and where?"},
         {"role": "assistant", "content": "In 1412, at Vellmar."}],
    ]  # fmt: skip
    return collate([encode_chat(tok, c, 128) for c in chats], tok.eos_token_id)


def _loss_and_grads(model: torch.nn.Module, batch: dict[str, torch.Tensor], autocast: bool) -> tuple[float, dict]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(123)  # the same dropout masks for both variants
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = AssistantLoss(model)(**batch)
        loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.item(), grads


@pytest.mark.parametrize(
    ("dropout", "autocast", "rtol"),
    [(0.0, False, 1e-5), (0.1, False, 1e-5), (0.0, True, 3e-2)],
    ids=["fp32", "fp32-dropout", "bf16-autocast"],
)
def test_fused_matches_peft(tiny_llama_dir: Path, dropout: float, autocast: bool, rtol: float) -> None:
    batch = _batch(tiny_llama_dir)
    reference = _peft(tiny_llama_dir, dropout)
    fused = _peft(tiny_llama_dir, dropout)
    assert fuse_lora(fused) == 2 * len(DEFAULT_TARGETS)  # 2 layers x 7 target modules
    assert unfuse_lora(fused) == 2 * len(DEFAULT_TARGETS) and fuse_lora(fused) == 2 * len(DEFAULT_TARGETS)
    ref_loss, ref_grads = _loss_and_grads(reference, batch, autocast)
    loss, grads = _loss_and_grads(fused, batch, autocast)
    assert loss == pytest.approx(ref_loss, rel=rtol)
    assert grads.keys() == ref_grads.keys() and len(grads) == 4 * len(DEFAULT_TARGETS)
    for name, g in grads.items():
        ref = ref_grads[name]
        scale = ref.abs().max().item()
        assert scale > 0, name
        assert (g - ref).abs().max().item() <= rtol * scale * 4, name


def test_disabled_or_merged_adapters_fall_back_to_peft(tiny_llama_dir: Path) -> None:
    batch = _batch(tiny_llama_dir)
    model = _peft(tiny_llama_dir, 0.0)
    fuse_lora(model)
    model.eval()
    with torch.no_grad():
        adapted = AssistantLoss(model)(**batch).item()
        with model.disable_adapter():
            base_only = AssistantLoss(model)(**batch).item()
        model.merge_adapter()
        merged = AssistantLoss(model)(**batch).item()
    assert base_only != pytest.approx(adapted, rel=1e-4)  # the adapters change the loss...
    assert merged == pytest.approx(adapted, rel=1e-4)  # ...and merged weights give the same one


def test_attention_kernel_choice() -> None:
    from types import SimpleNamespace

    smol = SimpleNamespace(num_attention_heads=9, num_hidden_layers=30)
    cfg = TrainConfig(micro_batch_size=16)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert attention_kernel(cfg, cpu, smol, longest=64) == "eager"  # toy data: 135 MiB of scores
    assert attention_kernel(cfg, cpu, smol, longest=512) == "sdpa"  # 8.4 GiB: over the budget
    assert attention_kernel(cfg, cuda, smol, longest=64) == "sdpa"
    assert attention_kernel(TrainConfig(attention="sdpa"), cpu, smol, longest=64) == "sdpa"
    assert attention_kernel(cfg, cpu, smol, longest=64, dtype=torch.float32) == "sdpa"  # as fast, no memory cost
