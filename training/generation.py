"""Loading base + adapter and greedy batch generation, shared by evaluation and the MLflow model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def load_model(
    base_model: str, adapter: str | Path | None = None, dtype: torch.dtype = torch.float32
) -> tuple[Any, Any]:
    """(model, tokenizer) for the base model, with the LoRA adapter applied when given."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        adapter if adapter and (Path(adapter) / "tokenizer.json").exists() else base_model
    )
    model: Any = AutoModelForCausalLM.from_pretrained(base_model, dtype=dtype)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    return model.eval(), tokenizer


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: Any,
    conversations: list[list[dict[str, str]]],
    max_new_tokens: int = 32,
    batch_size: int = 16,
) -> list[str]:
    """Greedy completions of each conversation (chat template + generation prompt), batched."""
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
        enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
        for row, i in enumerate(idx):
            texts[i] = tokenizer.decode(gen[row, enc["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    out = [texts[i] for i in range(len(conversations))]
    return out


@torch.no_grad()
def perplexity(model: Any, tokenizer: Any, conversations: list[list[dict[str, str]]], batch_size: int = 16) -> float:
    """exp(mean loss over assistant tokens) of the conversations (the reference answers)."""
    import math

    from training.batching import IGNORE, collate, encode_chat

    examples = [encode_chat(tokenizer, c, 2048) for c in conversations]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    total, count = 0.0, 0
    for start in range(0, len(examples), batch_size):
        batch = collate(examples[start : start + batch_size], pad)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        targets = batch["labels"][:, 1:]
        keep = targets != IGNORE
        loss = torch.nn.functional.cross_entropy(logits[keep].float(), targets[keep], reduction="sum")
        total += loss.item()
        count += int(keep.sum())
    return math.exp(total / max(count, 1))
