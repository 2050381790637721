"""Per-item scores of a generation against its reference, for any data.

- ``correct`` (0/1): the item has a short ``answer`` and the generation contains it (after
  normalisation); None for open-ended items, which have none.
- ``exact``: the normalised generation equals the normalised reference.
- ``token_f1``: SQuAD-style F1 of the normalised token bags of generation and reference.
- ``rouge_l``: F-measure of the longest common subsequence of normalised tokens (ROUGE-L, beta 1).

The gate's per-item ``score`` is ``correct`` where the item has an answer, else ``token_f1``; when
every item has an answer the scores are binary (exact McNemar), otherwise continuous (bootstrap).
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from dataclasses import dataclass

_PUNCT = str.maketrans("", "", string.punctuation)


def normalise(text: str) -> str:
    """Lower case, no accents, no punctuation, single spaces."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"\s+", " ", text.lower().translate(_PUNCT)).strip()


def tokens(text: str) -> list[str]:
    return normalise(text).split()


def token_f1(generation: str, reference: str) -> float:
    gen, ref = tokens(generation), tokens(reference)
    if not gen or not ref:
        return float(gen == ref)
    common = sum((Counter(gen) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(gen), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def lcs_length(a: list[str], b: list[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(generation: str, reference: str) -> float:
    gen, ref = tokens(generation), tokens(reference)
    if not gen or not ref:
        return float(gen == ref)
    lcs = lcs_length(gen, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(gen), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


@dataclass(frozen=True)
class ItemScore:
    correct: float | None
    exact: float
    token_f1: float
    rouge_l: float

    @property
    def score(self) -> float:
        return self.correct if self.correct is not None else self.token_f1


def score_item(generation: str, reference: str, answer: str | None) -> ItemScore:
    correct = None if not answer else float(normalise(answer) in normalise(generation))
    return ItemScore(correct, float(normalise(generation) == normalise(reference)),
                     token_f1(generation, reference), rouge_l(generation, reference))  # fmt: skip


def aggregate(items: list[ItemScore]) -> dict[str, float]:
    """Means over the items; ``accuracy`` over the items that have an answer (absent when none do)."""
    n = max(len(items), 1)
    out = {
        "exact_match": sum(i.exact for i in items) / n,
        "token_f1": sum(i.token_f1 for i in items) / n,
        "rouge_l": sum(i.rouge_l for i in items) / n,
        "score": sum(i.score for i in items) / n,
    }
    answered = [i.correct for i in items if i.correct is not None]
    if answered:
        out["accuracy"] = sum(answered) / len(answered)
    return out


def gate_metric(items: list[ItemScore]) -> tuple[str, bool]:
    """(name of the per-item score the gate compares, whether it is binary)."""
    with_answer = sum(i.correct is not None for i in items)
    if items and with_answer == len(items):
        return "accuracy", True
    return ("token_f1" if with_answer == 0 else "score"), False
