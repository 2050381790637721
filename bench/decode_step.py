"""The engine's decode step with the fused decoder (serving/worker/fused.py) against the Hugging Face
module path it replaces, on the same model, prompts and engine, alternating, in one run.

    .venv/bin/python bench/decode_step.py [--model DIR] [--weights int8] [--rows 1,32] [--tokens 32] [--repeats 3]

For each batch size: every prompt submitted at once, ``--tokens`` greedy tokens each; the decode steps'
median time (the first step, which prefills, is left out) and tokens/s of the whole run, fused and module
path alternating ``--repeats`` times (the machine's speed drifts: the best of each counts). Checks that
both produce the same tokens. Prints the ratio module path / fused per batch size.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def run(model: object, tok: object, rows: int, tokens: int, fused: bool) -> tuple[float, float, list[list[int]]]:
    """(median decode step s, tokens/s, each request's tokens)."""
    from bench.engine_throughput import prompts
    from serving.worker.engine import Engine, ModelSlot, SamplingParams

    slot = ModelSlot("bench", "1", model, tok)
    slot.eos_ids = set()
    engine = Engine(max_batch=max(rows, 1))
    engine.swap(slot)
    reqs = [engine.submit(messages=c, params=SamplingParams(max_tokens=tokens)) for c in prompts(rows)]
    for group in engine._groups.values():
        if not fused:
            group.fast = None
        elif group.fast is None:
            raise SystemExit("the fused decoder does not apply to this model: " + why(model))
    steps = []
    t0 = time.perf_counter()
    while engine.queued() or engine.running():
        t = time.perf_counter()
        engine.step()
        steps.append(time.perf_counter() - t)
    total = time.perf_counter() - t0
    return statistics.median(steps[1:] or steps), rows * tokens / total, [list(r.out_ids) for r in reqs]


def why(model: object) -> str:
    from serving.worker import fused

    return fused.why_not(model) or "the C loops did not load"


def main() -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from runtime.hardware import cpu_info
    from serving.worker.loader import quantise

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="")
    ap.add_argument("--weights", default="int8", help="as LIFECYCLE_SERVE_WEIGHTS: int8, float or auto")
    ap.add_argument("--rows", default="1,32")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if not args.model:
        from training.base_model import default_model_dir

        args.model = default_model_dir()
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    print(f"model {args.model}, float32 on CPU ({cpu_info()[0]}, {torch.get_num_threads()} threads); "
          f"weights: {quantise(model, tok, args.weights, 'bench')}")  # fmt: skip
    run(model, tok, 2, 2, True)  # warm-up of both paths
    run(model, tok, 2, 2, False)
    print("| rows | decode step, module path | decode step, fused | tokens/s, module path | tokens/s, fused | ratio |")
    print("|---|---|---|---|---|---|")
    for rows in [int(x) for x in args.rows.split(",")]:
        mods, fuses = [], []
        for _ in range(args.repeats):
            mods.append(run(model, tok, rows, args.tokens, False))
            fuses.append(run(model, tok, rows, args.tokens, True))
        if any(f[2] != m[2] for f, m in zip(fuses, mods, strict=True)):
            raise SystemExit(f"rows={rows}: the fused decoder's tokens differ from the module path's")
        m, f = min(x[0] for x in mods), min(x[0] for x in fuses)
        mt, ft = max(x[1] for x in mods), max(x[1] for x in fuses)
        print(f"| {rows} | {m * 1e3:.1f} ms | {f * 1e3:.1f} ms | {mt:.1f} | {ft:.1f} | {m / f:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
