"""The rollout's decision rule, pure: live evidence of a challenger and its champion in, one of
``continue`` / ``step`` / ``rollback`` out, with the reason and the figures behind it.

Each binary "bad answer" signal (a failed request, an empty answer, a thumbs-down) is a Wald
sequential probability ratio test on the challenger's rate against the champion's, which is measured
in the same traffic and stands in as known (it has many times the samples; one standard error is
added so that a champion lucky early on does not make an equal challenger look worse):

    H0: p_challenger = p0 = max(champion rate + its standard error, floor)    H1: p_challenger = p0 + margin

A signal other than errors is tested once the champion has ``baseline`` answers that show it: how
often answers are cut off or empty depends on the traffic (its max_tokens, its prompts), so without
the champion's rate on it there is nothing to compare with (errors are compared with the floor).

The log likelihood ratio of the challenger's counts is recomputed from them on every look. Crossing
``log((1 - beta) / (alpha / k))`` (k tested signals, Bonferroni) rolls back: under H0 the likelihood
ratio is a martingale, so by Ville's inequality a challenger no worse than its champion is rolled back
with probability <= alpha however often we look. A stage steps up only when every signal sits at or
below ``log(beta / (1 - alpha))`` and the stage has its minimum of challenger answers: a challenger
worse by the margin gets there with probability <= beta. Guard rails need no test: an error rate or a
latency beyond a fixed bound of the champion's rolls back at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

#: Binary signals, each a count of bad answers out of a count of answers that could show it. An answer
#: cut off by max_tokens counts: a degenerate model rarely stops on its own (the stop-reason mix).
SIGNALS = ("error", "empty", "truncated", "negative")
LATENCY_BASE = 1.05  # latency is kept as a histogram of ms per token in bins 5 % wide


def latency_bin(ms_per_token: float) -> int:
    return math.floor(math.log(max(ms_per_token, 1e-3)) / math.log(LATENCY_BASE))


def histogram(ms_per_token: list[float]) -> dict[int, int]:
    out: dict[int, int] = {}
    for ms in ms_per_token:
        b = latency_bin(ms)
        out[b] = out.get(b, 0) + 1
    return out


@dataclass
class Arm:
    """What one version showed in a rollout: answers, and how many of them were bad in each way."""

    requests: int = 0  # answered or failed (shadow answers included for a shadowed challenger)
    error: int = 0
    empty: int = 0  # answered with no tokens
    truncated: int = 0  # stopped by max_tokens
    rated: int = 0  # answers with feedback
    negative: int = 0  # feedback rating < 0
    positive: int = 0
    latency: dict[int, int] = field(default_factory=dict)  # ms per output token of completed answers: bin -> count
    agreement_sum: float = 0.0  # shadow answers: token F1 with the champion's, summed
    agreement_n: int = 0

    def count(self, signal: str) -> tuple[int, int]:
        """(bad, out of) for a signal."""
        if signal == "negative":
            return self.negative, self.rated
        if signal in ("empty", "truncated"):
            return getattr(self, signal), self.requests - self.error
        return self.error, self.requests

    def timed(self) -> int:
        return sum(self.latency.values())

    def latency_q(self, q: float) -> float:
        """The ``q`` quantile of ms per output token (the middle of its 5 % bin)."""
        rank, seen = int(self.timed() * q), 0
        for b in sorted(self.latency):
            seen += self.latency[b]
            if seen > rank:
                return float(LATENCY_BASE ** (b + 0.5))
        return 0.0

    def summary(self) -> dict[str, float]:
        out: dict[str, float] = {k: getattr(self, k) for k in ("requests", "error", "empty", "truncated", "rated",
                                                                 "negative", "positive")}  # fmt: skip
        if self.latency:
            out["ms_per_token_p50"] = round(self.latency_q(0.5), 2)
            out["ms_per_token_p95"] = round(self.latency_q(0.95), 2)
        if self.agreement_n:
            out["agreement"] = round(self.agreement_sum / self.agreement_n, 4)
        return out


@dataclass(frozen=True)
class Policy:
    alpha: float = 0.05  # chance of rolling back a challenger no worse than the champion
    beta: float = 0.10  # chance of stepping up a challenger worse by the margin
    margin: float = 0.15  # a bad-answer rate this much above the champion's counts as worse
    floor: float = 0.02  # the champion's rate is taken as at least this (a perfect champion is not evidence)
    min_requests: int = 20  # challenger answers a stage needs before it may step up
    max_error_increase: float = 0.20  # guard rail: challenger error rate above the champion's + this
    max_latency_ratio: float = 1.5  # guard rail: p50 ms per token above the champion's x this
    guard_min: int = 10  # challenger answers before a guard rail may fire
    baseline: int = 20  # champion answers a signal other than errors needs before it is tested


@dataclass
class Verdict:
    action: Literal["continue", "step", "rollback"]
    reason: str
    tests: dict[str, dict[str, float]] = field(default_factory=dict)


def llr(bad: int, n: int, p0: float, p1: float) -> float:
    """log likelihood ratio H1:H0 of ``bad`` of ``n`` Bernoulli trials."""
    return bad * math.log(p1 / p0) + (n - bad) * math.log((1 - p1) / (1 - p0))


def _rate(bad: int, n: int) -> float:
    return bad / n if n else 0.0


def decide(challenger: Arm, champion: Arm, stage_requests: int, policy: Policy = Policy()) -> Verdict:
    """The verdict on the evidence so far. ``stage_requests``: challenger answers since the stage began."""
    p = policy
    tests: dict[str, dict[str, float]] = {}
    # Guard rails first: a plain regression beyond a bound needs no test.
    if challenger.requests >= p.guard_min:
        ce, be = _rate(challenger.error, challenger.requests), _rate(champion.error, champion.requests)
        if ce > be + p.max_error_increase:
            return Verdict("rollback", f"guard rail: error rate {ce:.1%} vs champion {be:.1%} "
                                       f"(bound +{p.max_error_increase:.0%})")  # fmt: skip
    if challenger.timed() >= p.guard_min and champion.timed() >= p.guard_min:
        c50, b50 = challenger.latency_q(0.5), champion.latency_q(0.5)
        if b50 > 0 and c50 > b50 * p.max_latency_ratio:
            return Verdict("rollback", f"guard rail: {c50:.1f} ms per token vs champion {b50:.1f} "
                                       f"(bound x{p.max_latency_ratio})")  # fmt: skip
    tested, untested = [], []
    for signal in SIGNALS:
        bad_b, n_b = champion.count(signal)
        bad_c, n_c = challenger.count(signal)
        rate_b = _rate(bad_b, n_b)
        p0 = max(p.floor, rate_b + (math.sqrt(rate_b * (1 - rate_b) / n_b) if n_b else 0.0))
        p1 = p0 + p.margin
        if signal == "negative" and not (n_b or n_c):  # nobody rates
            continue
        if signal != "error" and n_b < p.baseline:
            untested.append(signal)
            continue
        if p1 >= 1:  # cannot tell them apart
            continue
        tested.append(signal)
        tests[signal] = {"challenger": _rate(bad_c, n_c), "champion": _rate(bad_b, n_b), "n": n_c,
                         "p0": round(p0, 4), "p1": round(p1, 4), "llr": round(llr(bad_c, n_c, p0, p1), 3)}  # fmt: skip
    k = max(1, len(tested))
    upper, lower = math.log((1 - p.beta) / (p.alpha / k)), math.log(p.beta / (1 - p.alpha))
    for signal in tested:
        t = tests[signal]
        t["reject_at"], t["accept_at"] = round(upper, 3), round(lower, 3)
        if t["llr"] >= upper:
            return Verdict("rollback", f"{signal} rate {t['challenger']:.1%} of {int(t['n'])} vs champion "
                                       f"{t['champion']:.1%}: worse by the margin (SPRT, llr {t['llr']:.2f} >= "
                                       f"{upper:.2f})", tests)  # fmt: skip
    if stage_requests < p.min_requests:
        return Verdict("continue", f"{stage_requests} of {p.min_requests} challenger answers in this stage", tests)
    waiting = [s for s in tested if tests[s]["llr"] > lower]
    if waiting:
        return Verdict("continue", "not yet shown no worse on " + ", ".join(waiting), tests)
    unknown = f"; untested: {', '.join(untested)} (champion answers < {p.baseline})" if untested else ""
    return Verdict("step", "no worse than the champion on " + ", ".join(tested) + " (SPRT)" + unknown, tests)


def token_f1(a: str, b: str) -> float:
    """Agreement of two answers: F1 of their word multisets (1.0 for two empty answers)."""
    wa, wb = a.lower().split(), b.lower().split()
    if not wa and not wb:
        return 1.0
    common: dict[str, int] = {}
    for w in wa:
        common[w] = common.get(w, 0) + 1
    overlap = 0
    for w in wb:
        if common.get(w, 0) > 0:
            common[w] -= 1
            overlap += 1
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(wb), overlap / len(wa)
    return 2 * precision * recall / (precision + recall)
