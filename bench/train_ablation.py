"""Where the trainer's speed comes from: one training step with and without each of its choices.

    .venv/bin/python bench/train_ablation.py [--rounds 4] [--model DIR] [--dtype float32]

Four variants of the same LoRA step (SmolLM2, bf16 autocast by default, toy-set batches of 16 sequences, loss
on assistant tokens only, AdamW): peft's LoRA forward or the fused one (`training/fused_lora.py`),
SDPA or eager attention. All four live in one process and take turns step by step, so noise from
the machine hits each alike. Prints the median step time of each and its speed-up over the first
(peft + SDPA, the baseline).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

VARIANTS = [("peft LoRA, SDPA", False, "sdpa"), ("fused LoRA, SDPA", True, "sdpa"),
            ("peft LoRA, eager", False, "eager"), ("fused LoRA, eager", True, "eager")]  # fmt: skip


def main() -> None:
    import torch

    from lifecycle.settings import load_settings
    from training.base_model import DEFAULT_MODEL, resolve_base_model
    from training.batching import collate, encode_chat
    from training.config import TrainConfig
    from training.finetune import AssistantLoss, load_model
    from training.fused_lora import unfuse_lora
    from training.records import parse_record

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="base model folder (default: the pulled SmolLM2)")
    parser.add_argument("--rounds", type=int, default=4, help="passes over the 5 batches (the first is warm-up)")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    args = parser.parse_args()
    model_dir = args.model or resolve_base_model(DEFAULT_MODEL, load_settings().models_dir)

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    records = [parse_record(line) for line in (REPO / "data/toy/train.jsonl").read_text().splitlines() if line.strip()]
    examples = sorted((encode_chat(tok, r.messages, 512) for r in records), key=lambda e: len(e.input_ids))
    batches = [collate(examples[i : i + 16], tok.eos_token_id) for i in range(0, 160, 32)]

    steps = {}
    for name, fused, attention in VARIANTS:
        cfg = TrainConfig(base_model=str(model_dir), dtype=args.dtype, attention=attention)  # type: ignore[arg-type]
        model = load_model(cfg, torch.device("cpu"))
        if not fused:  # load_model fuses; give the layers peft's own forward back
            assert unfuse_lora(model) > 0
        loss_fn = AssistantLoss(model)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)

        def step(batch: dict, loss_fn: AssistantLoss = loss_fn, opt: torch.optim.Optimizer = opt) -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.dtype == "bfloat16"):
                (loss_fn(**batch) / 1000).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        steps[name] = step
    times: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(args.rounds):
        for batch in batches:
            for name, step in steps.items():
                t0 = time.perf_counter()
                step(batch)
                if r:  # round 0 warms up
                    times[name].append(time.perf_counter() - t0)
    base = statistics.median(times[VARIANTS[0][0]])
    tokens = statistics.mean(int(b["attention_mask"].sum()) for b in batches)
    print(f"{'variant':20}{'median step s':>15}{'tokens/s':>10}{'speed-up':>10}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:20}{med:>15.3f}{tokens / med:>10.0f}{base / med:>9.2f}x")


if __name__ == "__main__":
    main()
