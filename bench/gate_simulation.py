"""The promotion gate by simulation: how often it promotes a candidate that is no better (false
promotions; must be at or below 1 - confidence) and how often it promotes one that is (power),
against the naive gate it replaced (promote when the candidate's mean beats the baseline's).

    .venv/bin/python bench/gate_simulation.py [--trials 1000] [--sizes 24,100,400] [--confidence 0.95]

Each trial draws a fresh eval split of n items with paired scores for baseline and candidate:
- binary (items with a short answer): item difficulty q ~ Beta(2, 2); the baseline answers right with
  probability q, the candidate with q + delta (independently given q, so the two are correlated as
  real models are through item difficulty);
- continuous (token-F1 of open-ended answers): item quality t ~ Beta(2, 3); each model's score is
  t + its own N(0, 0.15) noise (+ delta for the candidate), clipped to [0, 1].
Both gates see the same trials. Uses ``training.gate.paired_gate`` exactly as promotion does.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.gate import paired_gate


def draw(kind: str, n: int, delta: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    if kind == "binary":
        q = rng.beta(2, 2, n)
        base = (rng.random(n) < q).astype(float)
        cand = (rng.random(n) < np.clip(q + delta, 0, 1)).astype(float)
        return cand, base
    t = rng.beta(2, 3, n)
    base = np.clip(t + rng.normal(0, 0.15, n), 0, 1)
    cand = np.clip(t + rng.normal(0, 0.15, n) + delta, 0, 1)
    return cand, base


def rates(kind: str, n: int, delta: float, trials: int, confidence: float, seed: int) -> tuple[float, float]:
    """(share promoted by the paired gate, share promoted by the naive mean comparison)."""
    rng = np.random.default_rng(seed)
    ours = naive = 0
    for t in range(trials):
        cand, base = draw(kind, n, delta, rng)
        res = paired_gate(cand, base, binary=kind == "binary", confidence=confidence, seed=t)
        ours += res.promote
        naive += cand.mean() > base.mean()
    return ours / trials, naive / trials


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--sizes", default="24,100,400")
    ap.add_argument("--confidence", type=float, default=0.95)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    cases = [("binary", 0.0), ("binary", 0.10), ("binary", 0.20), ("continuous", 0.0), ("continuous", 0.03),
             ("continuous", 0.06)]  # fmt: skip
    alpha = 1 - args.confidence
    print(f"{args.trials} trials per row, confidence {args.confidence}; delta 0 rows are false promotions "
          f"(must be <= {alpha:.3f}), the others power")  # fmt: skip
    print("| scores | true effect | n | paired gate promotes | naive gate promotes | ratio naive/paired |")
    print("|---|---|---|---|---|---|")
    t0, worst = time.perf_counter(), 0.0
    for i, (kind, delta) in enumerate(cases):
        for n in sizes:
            ours, naive = rates(kind, n, delta, args.trials, args.confidence, seed=1000 * i + n)
            if delta == 0:
                worst = max(worst, ours)
            ratio = f"{naive / ours:.1f}x" if ours else "-"
            print(f"| {kind} | +{delta:.2f} | {n} | {ours:.3f} | {naive:.3f} | {ratio} |", flush=True)
    # Monte Carlo error of a rate near alpha over `trials` trials: ~ sqrt(alpha (1 - alpha) / trials)
    slack = 2 * (alpha * (1 - alpha) / args.trials) ** 0.5
    ok = worst <= alpha + slack
    print(f"worst false-promotion rate {worst:.3f} (limit {alpha:.3f} + {slack:.3f} Monte Carlo slack): "
          f"{'OK' if ok else 'TOO HIGH'}; {time.perf_counter() - t0:.0f} s")  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
