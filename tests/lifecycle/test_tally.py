"""The rollout tallies (lifecycle/tally.py): the counts a batch of inference-log records adds, and the
arms read back from them, equal the arms counted record by record."""

from __future__ import annotations

import random

from lifecycle import tally
from lifecycle.sequential import Arm, histogram


def _doc(incs: dict[str, float]) -> dict[str, object]:
    """A tally document as Mongo builds it from ``$inc`` paths."""
    doc: dict[str, object] = {}
    for path, n in incs.items():
        *parents, leaf = path.split(".")
        at = doc
        for p in parents:
            at = at.setdefault(p, {})  # type: ignore[assignment]
        at[leaf] = at.get(leaf, 0) + n  # type: ignore[attr-defined, operator]
    return doc


def test_tallies_of_a_rollout_equal_the_records_counted_one_by_one() -> None:
    rng = random.Random(3)
    records = []
    for i in range(500):
        finish = rng.choice(["stop", "length", "error", "cancelled", "stop"])
        records.append({"rollout": "m:2", "arm": rng.choice(["champion", "challenger", "shadow"]),
                        "stage": rng.choice([0, 1]), "finish_reason": finish,
                        "completion_tokens": 0 if finish == "error" else rng.choice([0, 5, 24]),
                        "latency_ms": rng.uniform(50, 900),
                        "agreement": rng.random() if i % 3 == 0 else None})  # fmt: skip
    records.append({"model": "m", "version": "1", "finish_reason": "stop", "completion_tokens": 3, "latency_ms": 30})
    records.append({"finish_reason": "stop"})  # neither rollout nor version: counted nowhere
    incs = tally.increments(records)
    assert set(incs) == {"m:2", tally.version_key("m", 1)}
    challenger, champion, stage_n = tally.arms(_doc(incs["m:2"]), stage=1)

    expected = {"challenger": Arm(), "champion": Arm()}
    ms: dict[str, list[float]] = {"challenger": [], "champion": []}
    for r in records[:500]:
        arm = "champion" if r["arm"] == "champion" else "challenger"
        a = expected[arm]
        a.requests += 1
        if r["finish_reason"] == "error":
            a.error += 1
        elif r["finish_reason"] != "cancelled":
            a.empty += r["completion_tokens"] == 0
            a.truncated += r["finish_reason"] == "length"
            if r["arm"] != "shadow":  # mirrored answers wait for spare capacity: not timed
                ms[arm].append(r["latency_ms"] / max(1, r["completion_tokens"]))
        if r["agreement"] is not None:
            a.agreement_sum += r["agreement"]
            a.agreement_n += 1
    for name, got in (("challenger", challenger), ("champion", champion)):
        want = expected[name]
        assert (got.requests, got.error, got.empty, got.truncated, got.agreement_n) == (
            want.requests, want.error, want.empty, want.truncated, want.agreement_n)  # fmt: skip
        assert abs(got.agreement_sum - want.agreement_sum) < 1e-6
        assert got.latency == histogram(ms[name])
        exact = sorted(ms[name])[len(ms[name]) // 2]
        assert abs(got.latency_q(0.5) / exact - 1) < 0.05  # the median within its 5 % bin
    assert stage_n == sum(1 for r in records[:500] if r["arm"] != "champion" and r["stage"] == 1)
    history = _doc(incs[tally.version_key("m", "1")])["all"]
    assert history == {"requests": 1, "lat": {str(tally.latency_bin(10.0)): 1}}


def test_a_replaced_rating_moves_the_count_instead_of_adding_one() -> None:
    first = tally.rating_counts(-1)
    change = tally.rating_counts(1)
    for k, v in tally.rating_counts(-1, -1).items():
        change[k] = change.get(k, 0) + v
    arm = Arm()
    tally.add(arm, _doc({**first}))
    tally.add(arm, _doc(change))
    assert (arm.rated, arm.negative, arm.positive) == (1, 0, 1)
