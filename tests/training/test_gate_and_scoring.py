"""The gate's statistics and the per-item scores, as pure functions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.gate import GateError, mcnemar_exact, paired_gate
from training.scoring import aggregate, gate_metric, rouge_l, score_item, token_f1


def test_mcnemar_exact_counts_discordant_pairs_and_sums_the_binomial_tail() -> None:
    cand = [1, 1, 1, 1, 1, 0, 1, 0]
    base = [0, 0, 0, 0, 1, 0, 1, 1]
    b, c, p = mcnemar_exact(cand, base)
    assert (b, c) == (4, 1)
    assert p == pytest.approx(sum(math.comb(5, k) for k in range(4, 6)) / 32)  # 6/32
    assert mcnemar_exact([1, 0], [1, 0]) == (0, 0, 1.0)  # no discordant pair: no evidence


def test_binary_gate_needs_evidence_not_one_item() -> None:
    base = [0.0] * 12 + [1.0] * 12
    one_better = [1.0] + [0.0] * 11 + [1.0] * 12  # 24 items, one more right
    res = paired_gate(one_better, base, binary=True)
    assert not res.promote and res.p_value == 0.5 and res.n == 24 and res.test == "mcnemar-exact"
    many_better = [1.0] * 10 + [0.0] * 2 + [1.0] * 12
    res = paired_gate(many_better, base, binary=True)
    assert res.promote and res.p_value < 0.01 and res.ci_low > 0 and res.effect == pytest.approx(10 / 24)
    assert "10 items only the candidate" in res.reason


def test_margin_is_required_of_the_lower_bound() -> None:
    base = [0.0] * 40
    cand = [1.0] * 8 + [0.0] * 32  # +0.2, clearly better than 0, not clearly better than 0.15
    assert paired_gate(cand, base, binary=True, margin=0.0).promote
    assert not paired_gate(cand, base, binary=True, margin=0.15).promote


def test_continuous_gate_uses_the_bootstrap_and_is_reproducible() -> None:
    rng = np.random.default_rng(3)
    base = rng.uniform(0.2, 0.6, 60)
    cand = np.clip(base + rng.normal(0.08, 0.05, 60), 0, 1)
    a = paired_gate(cand, base, binary=False, metric="token_f1")
    b = paired_gate(cand, base, binary=False, metric="token_f1")
    assert a == b and a.promote and a.test == "paired-bootstrap" and a.ci_low < a.effect < a.ci_high
    same = paired_gate(base, base, binary=False)
    assert not same.promote and same.effect == 0


def test_gate_refuses_scores_it_cannot_compare() -> None:
    with pytest.raises(GateError, match="candidate has 2 item scores, baseline 3"):
        paired_gate([1, 0], [1, 0, 1], binary=True)
    with pytest.raises(GateError, match="binary item scores must be 0 or 1"):
        paired_gate([0.5, 1], [1, 0], binary=True)
    with pytest.raises(GateError, match="no item scores"):
        paired_gate([], [], binary=False)
    with pytest.raises(GateError, match="finite"):
        paired_gate([float("nan")], [0.0], binary=False)


def test_open_ended_answers_get_a_meaningful_score() -> None:
    ref = "The capital of Thandfusnu is Kronzaemfei."
    assert token_f1("The capital is Kronzaemfei", ref) == pytest.approx(2 * 1.0 * (4 / 6) / (1 + 4 / 6))
    assert token_f1("bananas", ref) == 0.0 and token_f1(ref, ref) == 1.0
    assert rouge_l("capital of Thandfusnu Kronzaemfei", ref) > rouge_l("Kronzaemfei Thandfusnu of capital", ref)
    item = score_item("It is Kronzaemfei!", ref, None)
    assert item.correct is None and item.score == item.token_f1 > 0


def test_items_with_answers_are_binary_and_mixes_are_continuous() -> None:
    answered = [score_item("King Quonthox rules", "Thandfusnu is ruled by King Quonthox.", "King Quonthox")]
    assert answered[0].correct == 1.0 and gate_metric(answered) == ("accuracy", True)
    open_ended = [score_item("a b", "a b c", None)]
    assert gate_metric(open_ended) == ("token_f1", False)
    assert gate_metric(answered + open_ended) == ("score", False)
    metrics = aggregate(answered + open_ended)
    assert metrics["accuracy"] == 1.0  # over the items that have an answer
    assert metrics["score"] == pytest.approx((1.0 + open_ended[0].token_f1) / 2)
    assert "accuracy" not in aggregate(open_ended)
