"""The rollout's decision rule (lifecycle/sequential.py) on simulated traffic: how fast a bad
challenger is rolled back, how rarely a good one is, and the guard rails."""

from __future__ import annotations

import random

from lifecycle.sequential import Arm, Policy, decide, histogram, token_f1


def simulate(p_bad_challenger: float, p_bad_champion: float, share: float, seed: int, requests: int = 400
             ) -> tuple[str, int]:  # fmt: skip
    """Users rate every answer; the challenger answers ``share`` of requests. (verdict, requests seen)."""
    rng = random.Random(seed)
    challenger, champion = Arm(), Arm()
    for i in range(1, requests + 1):
        arm, p = (challenger, p_bad_challenger) if rng.random() < share else (champion, p_bad_champion)
        arm.requests += 1
        arm.rated += 1
        bad = rng.random() < p
        arm.negative += bad
        arm.positive += not bad
        verdict = decide(challenger, champion, challenger.requests)
        if verdict.action != "continue":
            return verdict.action, i
    return "continue", requests


def test_a_challenger_with_30_percent_bad_answers_is_rolled_back_at_a_5_percent_canary() -> None:
    runs = [simulate(0.30, 0.0, 0.05, seed, requests=1000) for seed in range(200)]
    rolled = sorted(n for action, n in runs if action == "rollback")
    assert len(rolled) >= 196, len(rolled)  # beta = 0.1 bounds the steps; at 30 % vs 15 % they are rarer
    assert rolled[len(rolled) // 2] <= 200, rolled[len(rolled) // 2]  # median requests until rollback


def test_a_challenger_as_good_as_its_champion_is_rarely_rolled_back_and_steps_up() -> None:
    runs = [simulate(0.05, 0.05, 0.25, seed, requests=2000) for seed in range(300)]
    false_rollbacks = sum(a == "rollback" for a, _ in runs)
    assert false_rollbacks <= 0.05 * len(runs), false_rollbacks
    assert sum(a == "step" for a, _ in runs) >= 0.9 * len(runs)


def test_a_stage_waits_for_its_minimum_and_an_unrated_signal_waits_for_feedback() -> None:
    clean = Arm(requests=100, rated=100, positive=100)
    verdict = decide(Arm(requests=10, rated=10, positive=10), clean, stage_requests=10, policy=Policy(min_requests=20))
    assert verdict.action == "continue" and "10 of 20" in verdict.reason
    unrated = decide(Arm(requests=60), clean, stage_requests=60)
    assert unrated.action == "continue" and "negative" in unrated.reason
    assert decide(Arm(requests=60, rated=60, positive=60), clean, stage_requests=60).action == "step"


def test_guard_rails_roll_back_at_once() -> None:
    champion = Arm(requests=200, latency=histogram([10.0] * 200))
    errors = decide(Arm(requests=10, error=4, latency=histogram([10.0] * 6)), champion, 10)
    assert errors.action == "rollback" and "error rate" in errors.reason
    slow = decide(Arm(requests=12, latency=histogram([16.0] * 12)), champion, 12)
    assert slow.action == "rollback" and "ms per token" in slow.reason
    assert decide(Arm(requests=12, latency=histogram([14.0] * 12)), champion, 12).action == "continue"


def test_a_champion_that_is_always_bad_on_a_signal_leaves_that_signal_untested() -> None:
    champion = Arm(requests=100, empty=95, latency=histogram([1.0] * 5))
    verdict = decide(Arm(requests=30, empty=30), champion, 30, Policy(min_requests=1))
    assert "empty" not in verdict.tests and "negative" not in verdict.tests  # nobody rates: not a signal here
    assert verdict.action == "step", verdict


def test_agreement_is_word_f1() -> None:
    assert token_f1("Paris is the capital", "the capital is Paris") == 1.0
    assert token_f1("", "") == 1.0 and token_f1("a b", "c d") == 0.0
    assert abs(token_f1("a b c d", "a b") - 2 / 3) < 1e-9


def test_a_signal_the_traffic_shapes_waits_for_the_champions_baseline() -> None:
    # Every answer cut off by max_tokens: normal for this traffic, unknown until the champion shows it.
    cut = Arm(requests=150, truncated=150)
    few = decide(cut, Arm(requests=5, truncated=5), stage_requests=150)
    assert few.action == "step" and "untested: empty, truncated" in few.reason, few.reason
    assert decide(cut, Arm(requests=40, truncated=40), stage_requests=150).action == "step"
    assert decide(cut, Arm(requests=40), stage_requests=150).action == "rollback"
    errors = decide(Arm(requests=150, error=40), Arm(), stage_requests=150)  # errors: against the floor
    assert errors.action == "rollback" and "error" in errors.reason
