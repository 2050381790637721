"""The int8 layers of a decode step with the C quantisation loops (``serving/worker/kernels.py``) and
with torch's ops, in one run: each group of the quantised model (q/k/v, o, gate/up, down, head) is
called alone on a decode step's rows, both ways alternating, and its best time is counted as many
times as the model has such groups. Also checks the two ways give the same bits.

    .venv/bin/python bench/int8_kernels.py [--model DIR] [--rows 1,32] [--calls 200] [--repeats 3]

Prints per group shape and per decode step: milliseconds with the loops, with torch's ops, of which
``torch._int_mm``, and the ratio.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def best(fn: object, calls: int, repeats: int) -> float:
    """Best mean seconds of ``calls`` calls over ``repeats`` rounds."""
    out = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()  # type: ignore[operator]
        out = min(out, (time.perf_counter() - t0) / calls)
    return out


def main() -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from serving.worker import int8

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="")
    ap.add_argument("--rows", default="1,32")
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if not args.model:
        from training.base_model import default_model_dir

        args.model = default_model_dir()
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    report = int8.apply(model, tok, "int8", "bench")
    groups = [m for m in model.modules() if isinstance(m, int8.Group)]
    if report is None or not groups or groups[0].kernels is None:
        print("no int8 groups with C loops here (no compiler?): nothing to compare")
        return 1
    loops = groups[0].kernels
    shapes: dict[tuple[int, ...], list[int8.Group]] = {}
    for g in groups:
        shapes.setdefault(tuple(g.wq.shape), []).append(g)
    print(f"model {args.model}: {len(groups)} int8 groups; torch threads {torch.get_num_threads()}")
    print("| rows | group [out, in] x count | C loops us | torch ops us | of which _int_mm us | ratio |")
    print("|---|---|---|---|---|---|")
    with torch.inference_mode():
        for rows in [int(r) for r in args.rows.split(",")]:
            totals = [0.0, 0.0, 0.0]
            for shape, members in shapes.items():
                g = members[0]
                x = torch.randn(rows, shape[1])
                g.kernels = loops
                fused = g.compute(x)
                g.kernels = None
                if not torch.equal(fused, g.compute(x)):
                    print(f"the two ways differ for {shape}")
                    return 1
                q = torch.randint(-127, 128, (rows, shape[1]), dtype=torch.int8)
                times = {"loops": float("inf"), "torch": float("inf")}
                for _ in range(args.repeats):  # alternating
                    for name, k in (("loops", loops), ("torch", None)):
                        g.kernels = k
                        times[name] = min(times[name], best(lambda g=g, x=x: g.compute(x), args.calls, 1))
                g.kernels = loops
                mm = best(lambda g=g, q=q: torch._int_mm(q, g.wq.t()), args.calls, args.repeats)
                n = len(members)
                for i, v in enumerate((times["loops"], times["torch"], mm)):
                    totals[i] += v * n
                print(f"| {rows} | {list(shape)} x {n} | {times['loops'] * 1e6:.0f} | {times['torch'] * 1e6:.0f} | "
                      f"{mm * 1e6:.0f} | {times['torch'] / times['loops']:.2f}x |")  # fmt: skip
            print(f"| {rows} | **a decode step** | {totals[0] * 1e3:.1f} ms | {totals[1] * 1e3:.1f} ms | "
                  f"{totals[2] * 1e3:.1f} ms | **{totals[1] / totals[0]:.2f}x** |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
