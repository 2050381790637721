"""The promotion gate on real adapters: a real improvement is promoted, an adapter trained on
shuffled answers is not, and open-ended data (no short answers) gets a non-zero score and a
decision with its confidence interval.

    lifecycle up && .venv/bin/python bench/gate_real.py [--max-steps 80] [--eval-limit 100]

Runs against the local stack (MLflow, MongoDB, Kafka) under a registered-model name of its own:
A) SmolLM2 + LoRA on the toy set vs the base model (binary scores: exact McNemar);
B) the same recipe on the toy set with every answer moved to another question, vs champion A;
C) the same recipe on the toy set whose eval items carry no ``answer`` (open-ended: token-F1,
   paired bootstrap), vs champion A.
Prints each decision with n, effect, CI and p-value; exits 1 when A is not promoted or B is.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def shuffled(src: Path, dst: Path, seed: int = 0) -> Path:
    """The toy records with each assistant answer given to another question."""
    rows = [json.loads(line) for line in src.read_text().splitlines() if line.strip()]
    answers = [r["messages"][-1]["content"] for r in rows]
    random.Random(seed).shuffle(answers)
    for r, a in zip(rows, answers, strict=True):
        r["messages"][-1]["content"] = a
    dst.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return dst


def open_ended(src: Path, dst: Path) -> Path:
    rows = [json.loads(line) for line in src.read_text().splitlines() if line.strip()]
    dst.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "answer"}) + "\n" for r in rows))
    return dst


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-steps", type=int, default=80)
    ap.add_argument("--eval-limit", type=int, default=100)
    ap.add_argument("--confidence", type=float, default=0.95)
    ap.add_argument("--cases", default="ABC", help="which of A, B, C to run (B and C compare with the champion)")
    ap.add_argument("--model-name", default="", help="registered model to use (default: a new one)")
    args = ap.parse_args()

    from lifecycle.settings import load_settings
    from training import steps
    from training.base_model import resolve_base_model
    from training.config import TrainConfig

    s = load_settings(model_name=args.model_name or f"gate-real-{uuid.uuid4().hex[:6]}")
    base = resolve_base_model(s.base_model, s.models_dir)
    tmp = Path(tempfile.mkdtemp(prefix="gate-real-"))
    toy_train, toy_eval = REPO / "data/toy/train.jsonl", REPO / "data/toy/eval.jsonl"
    cases = [
        ("A real answers vs base", toy_train, toy_eval),
        ("B shuffled answers vs champion A", shuffled(toy_train, tmp / "shuffled.jsonl"), toy_eval),
        ("C open-ended eval vs champion A", toy_train, open_ended(toy_eval, tmp / "open-eval.jsonl")),
    ]
    rows, decisions = [], {}
    for label, train, evaluation in cases:
        if label[0] not in args.cases:
            continue
        t0 = time.monotonic()
        ds, _ = steps.ingest(s, train, str(train), name=label[0].lower(), eval_source=evaluation)
        cfg = TrainConfig(base_model=base, dataset=str(ds.path), out_dir=str(tmp / label[0]),
                          max_steps=args.max_steps, checkpoint_every=0, seed=1 if label[0] == "C" else 0)  # fmt: skip
        run = steps.train(s, cfg, 1, lambda _m: None)
        result = steps.evaluate(s, run.mlflow_run_id, args.eval_limit, lambda _m: None)
        res = steps.promote(s, run.mlflow_run_id, lambda _m: None, margin=0.0, confidence=args.confidence)
        g = res.gate
        decisions[label[0]] = res.promoted
        metric = g["metric"]
        rows.append(f"| {label} | {metric} | {g['n']} | {g['candidate']:.3f} | {g['baseline']:.3f} | "
                    f"{g['effect']:+.3f} [{g['ci_low']:+.3f}, {g['ci_high']:+.3f}] | {g['p_value']:.2g} | "
                    f"{g['test']} | {'promoted' if res.promoted else 'not promoted'} | "
                    f"{time.monotonic() - t0:.0f} s |")  # fmt: skip
        print(rows[-1], flush=True)
        metrics = {k: round(v, 3) for k, v in result["candidate"]["metrics"].items()}
        print(f"   candidate metrics: {json.dumps(metrics)}")
    print(f"\nmodel {s.model_name}, {args.max_steps} steps per adapter, {args.eval_limit} eval items, "
          f"confidence {args.confidence}")  # fmt: skip
    print("| candidate | score | n | candidate | baseline | effect [CI] | p | test | decision | wall |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    ok = decisions.get("A", True) is True and decisions.get("B", False) is False
    print("OK: the real improvement is promoted, the shuffled adapter is not" if ok else "UNEXPECTED decisions")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
