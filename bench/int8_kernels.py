"""The int8 layers of a decode step three ways, in one run: the VNNI loop on packed weights (one C call a
group: quantise, integer product, dequantise, float outlier channels; ``serving/worker/kernels.c``), the C
quantisation loops around ``torch._int_mm``, and torch's ops alone. Each group of the quantised model
(q/k/v, o, gate/up, down, head) is called alone on a decode step's rows, the ways alternating, and its best
time is counted as many times as the model has such groups. Checks that the C loops give torch's bits and
the VNNI loop a result close to them (its outlier channels in int16).

    .venv/bin/python bench/int8_kernels.py [--model DIR] [--rows 1,32] [--calls 200] [--repeats 3]

Prints per group shape and per decode step: microseconds each way, and torch's ops / the fastest way.
Without AVX-512 VNNI (or without a compiler) the ways this machine lacks are left out.
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
    import copy

    loops = groups[0].kernels
    shapes: dict[tuple[int, ...], list[int8.Group]] = {}
    for g in groups:
        shapes.setdefault((sum(g.splits), g.inv_smooth.shape[0]), []).append(g)

    def variant(g: int8.Group, kernels: object, vnni: bool) -> int8.Group:
        twin = copy.deepcopy(g)
        twin.kernels, twin.vnni = kernels, vnni
        twin._hold()
        return twin

    names = ["VNNI loop", "C loops + _int_mm", "torch ops"] if loops.vnni else ["C loops + _int_mm", "torch ops"]
    print(f"model {args.model}: {len(groups)} int8 groups; torch threads {torch.get_num_threads()}")
    print(f"| rows | group [out, in] x count | {' us | '.join(names)} us | torch ops / fastest |")
    print("|---|---|" + "---|" * (len(names) + 1))
    with torch.inference_mode():
        for rows in [int(r) for r in args.rows.split(",")]:
            totals = [0.0] * len(names)
            for shape, members in shapes.items():
                ways = [
                    variant(members[0], loops, True),
                    variant(members[0], loops, False),
                    variant(members[0], None, False),
                ]
                ways = ways[-len(names) :]
                x = torch.randn(rows, shape[1])
                outs = [w.compute(x) for w in ways]
                scale = float(outs[-1].abs().max())  # the VNNI loop's outlier channels in int16: ~1e-4 of the largest
                if not torch.equal(outs[-2], outs[-1]) or not torch.allclose(
                    outs[0], outs[-1], rtol=1e-3, atol=1e-3 * scale
                ):
                    print(f"the ways differ for {shape}")
                    return 1
                times = [float("inf")] * len(ways)
                for _ in range(args.repeats):  # alternating
                    for i, w in enumerate(ways):
                        times[i] = min(times[i], best(lambda w=w, x=x: w.compute(x), args.calls, 1))
                n = len(members)
                for i, v in enumerate(times):
                    totals[i] += v * n
                cells = " | ".join(f"{t * 1e6:.0f}" for t in times)
                print(f"| {rows} | {list(shape)} x {n} | {cells} | {times[-1] / min(times):.2f}x |")
            cells = " | ".join(f"{t * 1e3:.1f} ms" for t in totals)
            print(f"| {rows} | **a decode step** | {cells} | **{totals[-1] / min(totals):.2f}x** |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
