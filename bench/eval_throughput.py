"""Evaluation speed on the device the shared policy picks: greedy generation of the toy eval
questions and the reference-answer loss, as ``lifecycle evaluate`` runs them for one model.

    .venv/bin/python bench/eval_throughput.py [--model DIR] [--items 200] [--max-new-tokens 32]
        [--device auto] [--dtype auto]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    import torch

    from training.generation import generate, load_model, reference_losses
    from training.records import parse_record

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="")
    ap.add_argument("--items", type=int, default=200)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    args = ap.parse_args()
    if not args.model:
        from training.base_model import default_model_dir

        args.model = default_model_dir()
    lines = (REPO / "data/toy/eval.jsonl").read_text().splitlines()
    items = [parse_record(line) for line in lines if line.strip()][: args.items]
    model, tok = load_model(args.model, dtype=args.dtype, device=args.device)
    dev = model.device
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    print(f"model {args.model} in {model.dtype} on {dev} ({name}), {len(items)} items")
    generate(model, tok, [r.prompt_messages for r in items[:2]], max_new_tokens=2)  # warm-up
    t0 = time.perf_counter()
    gens = generate(model, tok, [r.prompt_messages for r in items], max_new_tokens=args.max_new_tokens)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t_gen = time.perf_counter() - t0
    t0 = time.perf_counter()
    losses = reference_losses(model, tok, [r.messages for r in items])
    t_loss = time.perf_counter() - t0
    print(f"generation: {len(gens)} items x up to {args.max_new_tokens} new tokens in {t_gen:.2f} s "
          f"({len(gens) / t_gen:.1f} items/s); reference loss: {sum(c for _, c in losses)} tokens in "
          f"{t_loss:.2f} s ({len(items) / t_loss:.1f} items/s)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
