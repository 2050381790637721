"""From chat records to training batches: assistant-only labels and length-grouped global batches.

Pure logic over token ids (torch only to build tensors). The order of global batches depends only on
the seed and the epoch, and every process computes the same order, then takes its own shard of each
global batch. So 1 process and N processes see the same global batches, and a resumed run continues
at exactly the batch it stopped before.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

IGNORE = -100


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]

    @property
    def target_tokens(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE)


def encode_chat(tokenizer: Any, messages: list[dict[str, str]], max_seq_len: int) -> Example:
    """Token ids of the chat template with labels only on assistant turns (and their end marker).

    Each assistant span is found as the difference between the template of the conversation up to
    that turn and the template of the turns before it with the generation prompt, so any chat
    template that renders prefixes consistently works.
    """
    ids: list[int] = _template(tokenizer, messages, add_generation_prompt=False)
    labels = [IGNORE] * len(ids)
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        start = len(_template(tokenizer, messages[:i], add_generation_prompt=True))
        end = len(_template(tokenizer, messages[: i + 1], add_generation_prompt=False))
        labels[start:end] = ids[start:end]
    return Example(ids[:max_seq_len], labels[:max_seq_len])


def _template(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> list[int]:
    if not messages:
        return []
    out = tokenizer.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=add_generation_prompt, return_dict=False
    )
    return list(out)


def global_batches(lengths: list[int], global_batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Example indices grouped into global batches for one epoch.

    Indices are shuffled with (seed, epoch), cut into windows of 8 global batches, sorted by length
    inside each window (so a batch holds similar lengths and padding stays small), then the batches
    are shuffled again so long and short ones alternate through the epoch. The last partial batch is
    dropped, so every optimizer step sees the same number of sequences.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = global_batch_size * 8
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
        for b in range(0, len(chunk) - global_batch_size + 1, global_batch_size):
            batches.append(chunk[b : b + global_batch_size])
    rng.shuffle(batches)
    return batches


def shard(batch: list[int], rank: int, world_size: int) -> list[int]:
    """This process's part of a global batch (contiguous, so lengths stay grouped)."""
    per = len(batch) // world_size
    return batch[rank * per : (rank + 1) * per]


def micro_batches(indices: list[int], micro_batch_size: int) -> list[list[int]]:
    return [indices[i : i + micro_batch_size] for i in range(0, len(indices), micro_batch_size)]


def collate(examples: list[Example], pad_id: int) -> dict[str, Any]:
    """Right-padded tensors: input_ids, attention_mask, labels (IGNORE on padding)."""
    import torch

    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        mask[row, :n] = 1
        labels[row, :n] = torch.tensor(e.labels)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
