"""Loading base + adapter and greedy batch generation, shared by evaluation and the MLflow model."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


def load_model(
    base_model: str, adapter: str | Path | None = None, dtype: str = "float32", device: str = "cpu"
) -> tuple[Any, Any]:
    """(model, tokenizer) for the base model, with the LoRA adapter applied when given, on the device
    and in the dtype of the shared policy (``auto``: see runtime/hardware.py; the choice is logged)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from runtime.hardware import choose

    choice = choose(dtype, device)
    if dtype == "auto" or device == "auto":
        log.info("loading %s in %s on %s: %s", base_model, choice.dtype, choice.device, choice.reason)
    tokenizer = AutoTokenizer.from_pretrained(
        adapter if adapter and (Path(adapter) / "tokenizer.json").exists() else base_model
    )
    model: Any = AutoModelForCausalLM.from_pretrained(base_model, dtype=choice.torch_dtype())
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    return model.to(choice.torch_device()).eval(), tokenizer


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: Any,
    conversations: list[list[dict[str, str]]],
    max_new_tokens: int = 32,
    batch_size: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> list[str]:
    """Greedy completions of each conversation (chat template + generation prompt), batched (by
    default 16 rows on CPU, 64 on a GPU); ``progress(done, total)`` after each batch."""
    batch_size = batch_size or (64 if model.device.type == "cuda" else 16)
    tokenizer.padding_side = "left"  # decoder-only: pad on the left so every row ends at its prompt
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out: list[str] = []
    order = sorted(range(len(conversations)), key=lambda i: len(str(conversations[i])))
    texts: dict[int, str] = {}
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        prompts = [
            tokenizer.apply_chat_template(conversations[i], tokenize=False, add_generation_prompt=True) for i in idx
        ]
        enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
        for row, i in enumerate(idx):
            texts[i] = tokenizer.decode(gen[row, enc["input_ids"].shape[1] :], skip_special_tokens=True).strip()
        if progress is not None:
            progress(len(texts), len(conversations))
    out = [texts[i] for i in range(len(conversations))]
    return out


@torch.no_grad()
def reference_losses(
    model: Any, tokenizer: Any, conversations: list[list[dict[str, str]]], batch_size: int = 16
) -> list[tuple[float, int]]:
    """Per conversation: (summed loss, token count) over its assistant tokens (the reference answer)."""
    from training.batching import IGNORE, collate, encode_chat

    examples = [encode_chat(tokenizer, c, 2048) for c in conversations]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out: list[tuple[float, int]] = []
    for start in range(0, len(examples), batch_size):
        batch = {k: v.to(model.device) for k, v in collate(examples[start : start + batch_size], pad).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        targets = batch["labels"][:, 1:]
        keep = targets != IGNORE
        loss = torch.nn.functional.cross_entropy(
            logits.float().transpose(1, 2), targets.clamp(min=0), reduction="none"
        )  # [batch, seq]
        for row in range(loss.shape[0]):
            out.append((float(loss[row][keep[row]].sum()), int(keep[row].sum())))
    return out


def perplexity_of(losses: list[tuple[float, int]]) -> float:
    """exp(mean loss per token) over all the conversations' reference tokens."""
    import math

    total, count = sum(t for t, _ in losses), sum(c for _, c in losses)
    return math.exp(total / max(count, 1))


def perplexity(model: Any, tokenizer: Any, conversations: list[list[dict[str, str]]], batch_size: int = 16) -> float:
    """exp(mean loss over assistant tokens) of the conversations (the reference answers)."""
    return perplexity_of(reference_losses(model, tokenizer, conversations, batch_size))
