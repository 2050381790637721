"""Feedback curated into training records (the flywheel's data step), pure: no I/O.

An answer users rated, with what they asked, becomes a chat record when it is worth learning from:

- a **correction** (any rating) -> the conversation with the corrected answer;
- a **positive rating** without a correction -> the conversation with the model's own answer;
- a negative or neutral rating without a correction -> nothing (nothing to learn the right answer from).

Then, in this order, each refusal reported with its reason and the feedback id:

1. **Personal data** is scrubbed from every message (``training/pii.py``); a record that is still
   kept says how many of each kind were replaced (``meta.pii``).
2. **Contamination guard**: a record that shares any word 8-gram with an evaluation record (prompt
   or reference, normalised: lower case, punctuation dropped), or contains a whole evaluation text
   shorter than 8 words, is refused: feedback never leaks an eval item into training.
3. **Duplicates**: exact duplicates (same normalised conversation) and near duplicates (Jaccard
   similarity of word 3-shingles >= 0.8, found by MinHash with LSH: 128 hashes, 32 bands of 4 rows,
   each candidate pair then checked exactly) keep the first (the most recent feedback wins when the
   caller sorts newest first).

Every kept record names its sources beside its messages (kept as the record's metadata by ingest):
``response_id``, ``feedback_id``, the model and version that answered, and ``source``
(``correction`` | ``accepted``): the lineage of each training record.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from training.pii import scrub

NGRAM = 8  # words: the contamination guard's n-gram
SHINGLE = 3  # words: near-duplicate shingles
JACCARD = 0.8  # near-duplicate threshold
HASHES, BANDS = 128, 32  # MinHash signature length and LSH bands (rows = HASHES // BANDS)
_PRIME = (1 << 61) - 1


@dataclass
class Curated:
    records: list[dict[str, Any]] = field(default_factory=list)
    refused: list[dict[str, str]] = field(default_factory=list)  # {"feedback_id", "reason"}
    pii: dict[str, int] = field(default_factory=dict)  # replacements by rule, over the kept records

    def refuse(self, item: dict[str, Any], reason: str) -> None:
        self.refused.append({"feedback_id": str(item.get("feedback_id") or item.get("response_id") or ""),
                             "reason": reason})  # fmt: skip


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def ngrams(tokens: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


class EvalGuard:
    """The evaluation texts a training record must not overlap (``NGRAM``-word n-grams, or a whole
    short eval text contained in it)."""

    def __init__(self, eval_texts: Iterable[str]) -> None:
        self.grams: set[tuple[str, ...]] = set()
        self.short: set[str] = set()
        for text in eval_texts:
            toks = words(text)
            if len(toks) >= NGRAM:
                self.grams |= ngrams(toks, NGRAM)
            elif len(toks) >= 3:  # two words are too common to mean a leak
                self.short.add(" ".join(toks))

    def overlap(self, text: str) -> str | None:
        """What of an eval text ``text`` contains, else None."""
        toks = words(text)
        for g in ngrams(toks, NGRAM):
            if g in self.grams:
                return " ".join(g)
        joined = f" {' '.join(toks)} "
        for s in self.short:
            if f" {s} " in joined:
                return s
        return None


def _hash64(s: str) -> int:
    return int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "big")


_rng = random.Random(1234)  # fixed: signatures are comparable across runs
_COEFFS = [(_rng.randrange(1, _PRIME), _rng.randrange(0, _PRIME)) for _ in range(HASHES)]


def minhash(tokens: list[str]) -> list[int]:
    shingles = {_hash64(" ".join(g)) for g in ngrams(tokens, SHINGLE)} or {_hash64(" ".join(tokens))}
    return [min((a * x + b) % _PRIME for x in shingles) for a, b in _COEFFS]


def jaccard(a: list[str], b: list[str]) -> float:
    sa, sb = ngrams(a, SHINGLE) or {tuple(a)}, ngrams(b, SHINGLE) or {tuple(b)}
    return len(sa & sb) / len(sa | sb)


class Deduper:
    """Keeps the first of each group of (near) duplicate texts."""

    def __init__(self) -> None:
        self.exact: set[str] = set()
        self.buckets: dict[tuple[int, tuple[int, ...]], list[int]] = {}
        self.kept: list[list[str]] = []

    def seen(self, text: str) -> str | None:
        """None (and remember ``text``) when it is new; else why it is a duplicate."""
        toks = words(text)
        key = " ".join(toks)
        if key in self.exact:
            return "exact duplicate"
        sig = minhash(toks)
        rows = HASHES // BANDS
        bands = [(i, tuple(sig[i * rows : (i + 1) * rows])) for i in range(BANDS)]
        for candidate in {c for band in bands for c in self.buckets.get(band, [])}:
            similarity = jaccard(toks, self.kept[candidate])
            if similarity >= JACCARD:
                return f"near duplicate (Jaccard {similarity:.2f} of word {SHINGLE}-shingles)"
        self.exact.add(key)
        for band in bands:
            self.buckets.setdefault(band, []).append(len(self.kept))
        self.kept.append(toks)
        return None


def to_record(item: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """The chat record of one rated answer (``messages`` asked, ``output``, ``rating``, ``correction``),
    or None and why not."""
    asked = item.get("messages") or ([{"role": "user", "content": item["prompt"]}] if item.get("prompt") else None)
    if not asked:
        return None, "the question was not kept (inference log content off, or expired)"
    correction = (item.get("correction") or "").strip()
    if correction:
        answer, source = correction, "correction"
    elif (item.get("rating") or 0) > 0 and (item.get("output") or "").strip():
        answer, source = item["output"], "accepted"
    else:
        return None, "rated down or neutral without a correction: nothing to learn the right answer from"
    meta = {k: str(item[k]) for k in ("response_id", "feedback_id", "model", "version") if item.get(k)}
    return {"messages": [*[{"role": m["role"], "content": m["content"]} for m in asked],
                         {"role": "assistant", "content": answer}], **meta, "source": source}, ""  # fmt: skip


def curate(items: Iterable[dict[str, Any]], eval_texts: Iterable[str]) -> Curated:
    """Records from rated answers (see the module's doc); ``items`` newest first."""
    out, guard, dedupe = Curated(), EvalGuard(eval_texts), Deduper()
    for item in items:
        record, why = to_record(item)
        if record is None:
            out.refuse(item, why)
            continue
        found: dict[str, int] = {}
        for m in record["messages"]:
            m["content"], hits = scrub(m["content"])
            for k, v in hits.items():
                found[k] = found.get(k, 0) + v
        text = "\n".join(m["content"] for m in record["messages"])
        leaked = guard.overlap(text)
        if leaked:
            out.refuse(item, f"overlaps an evaluation record: {leaked!r}")
            continue
        dup = dedupe.seen(text)
        if dup:
            out.refuse(item, dup)
            continue
        if found:
            record["pii"] = found
            for k, v in found.items():
                out.pii[k] = out.pii.get(k, 0) + v
        out.records.append(record)
    return out
