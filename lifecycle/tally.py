"""A rollout's evidence as running counts (Mongo ``rollout_tallies``), kept by the writers of the
inference log and of feedback, so that a decision look reads one document by ``_id`` instead of the
rollout's records. (Reading the records was a scan of the whole log on a MongoDB-protocol server
without index pushdown — FerretDB's SQLite backend: 1.5 s of its CPU at 15,000 records, taken from
the workers on a small machine, and growing with the log.)

One document per rollout (``_id`` = the rollout's id) holds, per stage and arm, paths such as
``s1.challenger.requests``; one per model version (``version:<model>@<version>``) holds the answers
given outside any rollout under ``all.`` (the champion's history, for a rollout whose first stage
gives the champion too few answers). Latency is a histogram of milliseconds per output token in bins
5 % wide (``lat.<bin>``), enough for the guard rail's median; shadow answers have none (they run in
the workers' background lane, on spare capacity, so their wait is not the model's speed). Counts are
``$inc``-ed after the records they count are written, so a gateway that dies loses both together.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from lifecycle.sequential import Arm, latency_bin


def version_key(model: str, version: str | int) -> str:
    return f"version:{model}@{version}"


def counts(record: dict[str, Any]) -> dict[str, float]:
    """What one inference-log record adds to its arm's counts."""
    out: dict[str, float] = {"requests": 1}
    finish, tokens = record.get("finish_reason", ""), int(record.get("completion_tokens") or 0)
    if finish == "error":
        out["error"] = 1
    elif finish != "cancelled":
        if tokens == 0:
            out["empty"] = 1
        if finish == "length":
            out["truncated"] = 1
        if record.get("arm") != "shadow":  # a mirrored answer waits for spare capacity: its time says nothing
            out[f"lat.{latency_bin(float(record.get('latency_ms') or 0) / max(1, tokens))}"] = 1
    if record.get("agreement") is not None:
        out["agreement_sum"], out["agreement_n"] = float(record["agreement"]), 1
    return out


def increments(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """``$inc`` documents by tally ``_id`` for a batch of inference-log records."""
    out: dict[str, dict[str, float]] = {}
    for rec in records:
        if rec.get("rollout"):
            key, prefix = rec["rollout"], f"s{int(rec.get('stage') or 0)}.{rec.get('arm') or 'champion'}."
        elif rec.get("model") and rec.get("version"):
            key, prefix = version_key(rec["model"], rec["version"]), "all."
        else:
            continue
        inc = out.setdefault(key, {})
        for path, n in counts(rec).items():
            inc[prefix + path] = inc.get(prefix + path, 0) + n
    return out


def rating_counts(rating: int, sign: int = 1) -> dict[str, float]:
    """What a rating adds to its arm (``sign=-1``: what a replaced rating takes away)."""
    out: dict[str, float] = {"rated": sign}
    if rating < 0:
        out["negative"] = sign
    elif rating > 0:
        out["positive"] = sign
    return out


def add(arm: Arm, tallied: dict[str, Any]) -> None:
    """Fold an arm's stored counts into ``arm``."""
    for name in ("requests", "error", "empty", "truncated", "rated", "negative", "positive"):
        setattr(arm, name, getattr(arm, name) + int(tallied.get(name, 0)))
    for b, n in (tallied.get("lat") or {}).items():
        arm.latency[int(b)] = arm.latency.get(int(b), 0) + int(n)
    arm.agreement_sum += float(tallied.get("agreement_sum", 0.0))
    arm.agreement_n += int(tallied.get("agreement_n", 0))


def arms(doc: dict[str, Any] | None, stage: int) -> tuple[Arm, Arm, int]:
    """(challenger, champion, challenger answers in ``stage``) from a rollout's tally document; shadow
    answers count for the challenger."""
    challenger, champion, stage_n = Arm(), Arm(), 0
    for key, by_arm in (doc or {}).items():
        if not (key.startswith("s") and key[1:].isdigit()):
            continue
        for name, tallied in by_arm.items():
            add(champion if name == "champion" else challenger, tallied)
            if name != "champion" and int(key[1:]) == stage:
                stage_n += int(tallied.get("requests", 0))
    return challenger, champion, stage_n
