"""How far int8 layers (``int8.py``) are from the float model they replace, on texts of its own: the
teacher-forced NLL of a check text, and how often the int8 model makes the float model's next-token choice
along the float model's greedy answers to a few chat prompts (not the calibration's)."""

from __future__ import annotations

from typing import Any

import torch

CHECK = (
    "A small bakery on the corner opens at six every morning. The owner, who learned the trade from her "
    "grandfather, bakes bread, rolls and a few cakes, and sells most of them before noon. Customers say the "
    "secret is patience: the dough rests for a whole day before it goes into the oven. When asked about "
    "expanding, she laughs and says that a bigger shop would only mean less time to talk to the people "
    "who come in. The city has changed around her, but the smell of fresh bread has not."
)
ANSWERS = ("What is the capital of France?", "Give me three tips for sleeping well.", "What is 12 times 11?",
           "Write a haiku about autumn.", "Explain photosynthesis simply.", "Who wrote Romeo and Juliet?",
           "How do I boil an egg?", "Name three planets.")  # fmt: skip
ANSWER_TOKENS = 24


def nll(model: Any, tokenizer: Any) -> float:
    """Teacher-forced mean NLL of the check text."""
    ids = tokenizer(CHECK, return_tensors="pt").input_ids.to(next(model.parameters()).device)
    with torch.no_grad():
        return float(model(input_ids=ids, labels=ids).loss)


def answers(model: Any, tokenizer: Any) -> tuple[torch.Tensor, torch.Tensor, int] | None:
    """The float model's greedy answers to ``ANSWERS`` (left-padded ids, attention mask, prompt width),
    None without a chat template."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
             for q in ANSWERS]  # fmt: skip
    side, pad = tokenizer.padding_side, tokenizer.pad_token
    tokenizer.padding_side = "left"
    if pad is None:
        tokenizer.pad_token = tokenizer.eos_token
    try:
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side, tokenizer.pad_token = side, pad
    device = next(model.parameters()).device
    enc = {k: v.to(device) for k, v in enc.items()}
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=ANSWER_TOKENS, min_new_tokens=ANSWER_TOKENS, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)  # fmt: skip
    width = enc["input_ids"].shape[1]
    mask = torch.cat([enc["attention_mask"], enc["attention_mask"].new_ones(out.shape[0], out.shape[1] - width)], 1)
    return out, mask, width


def choices(model: Any, answers: tuple[torch.Tensor, torch.Tensor, int]) -> torch.Tensor:
    """The model's next-token choice at every answer position, given the answers so far."""
    ids, mask, width = answers
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    return logits[:, width - 1 : -1].argmax(-1)
