"""Many adapters on one resident base: memory and speed of serving 8 LoRA versions from one worker.

    .venv/bin/python bench/adapters.py [--model DIR] [--adapters 8] [--rank 16] [--max-tokens 32]
        [--dtype auto] [--weights auto]

Builds ``--adapters`` random LoRA adapters (the trainer's default shape: rank 16 on every linear
layer of the blocks, saved by peft), attaches them to one resident base as the worker does, and
reports the process RSS of the base alone and with every adapter (against the bytes of the adapters
and of the base copies that serving merged versions would need). Then decodes, in one run, 32
requests x ``--max-tokens``: all on the base, all on one adapter, and spread over all adapters (each
batch mixing every adapter); prints tokens/s of each and the ratio to the base alone.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def make_adapters(model_dir: str, n: int, rank: int, out: Path) -> list[Path]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from training.targets import resolve

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    targets = resolve(["auto"], model)
    folders = []
    for i in range(n):
        torch.manual_seed(i)
        cfg = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets, init_lora_weights=False)
        peft_model = get_peft_model(model, cfg)
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_" in name:
                    p.mul_(0.1)
        peft_model.save_pretrained(out / f"a{i}")
        model = peft_model.unload()
        folders.append(out / f"a{i}")
    return folders


def decode(engine: object, slots: list, max_tokens: int, n: int = 32) -> float:
    from serving.worker.engine import SamplingParams

    made = [0]

    def sink(d: object) -> None:
        if getattr(d, "finish_reason", ""):
            made[0] += getattr(d, "completion_tokens", 0)

    t0 = time.perf_counter()
    for i in range(n):
        slot = slots[i % len(slots)]
        slot.eos_ids = set()
        msg = [{"role": "user", "content": f"Tell me about the number {i}."}]
        engine.submit(messages=msg, params=SamplingParams(max_tokens=max_tokens), sink=sink, slot=slot)  # type: ignore[attr-defined]
    while engine.queued() or engine.running():  # type: ignore[attr-defined]
        engine.step()  # type: ignore[attr-defined]
    return made[0] / (time.perf_counter() - t0)


def main() -> int:
    from runtime.hardware import choose
    from serving.worker.engine import Engine, ModelSlot
    from serving.worker.loader import attach_adapter, build_base, context_length, quantise
    from serving.worker.lora import LoraSet

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="")
    ap.add_argument("--adapters", type=int, default=8)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--weights", default="auto", help="the base's weights, as LIFECYCLE_SERVE_WEIGHTS")
    args = ap.parse_args()
    if not args.model:
        from training.base_model import default_model_dir

        args.model = default_model_dir()
    folders = make_adapters(args.model, args.adapters, args.rank, Path(tempfile.mkdtemp(prefix="adapters-")))
    choice = choose(args.dtype, "cpu")
    before = rss_mib()
    model, tok = build_base(args.model, "cpu", choice.dtype)
    weights = quantise(model, tok, args.weights, "base")
    base_bytes = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    with_base = rss_mib()
    slots = [attach_adapter("m", str(i + 1), model, tok, f) for i, f in enumerate(folders)]
    with_adapters = rss_mib()
    lora_set = LoraSet.attach(model)
    adapter_bytes = sum(a.numel() * a.element_size() + b.numel() * b.element_size()
                        for layer in lora_set.layers.values() for a, b, _ in layer.adapters.values())  # fmt: skip
    engine = Engine(max_batch=32)
    base_slot = ModelSlot("m", "base", model, tok, context_length(model))
    engine.swap(base_slot)
    decode(engine, [base_slot], 2, 4)  # warm-up
    plain = decode(engine, [base_slot], args.max_tokens)
    one = decode(engine, slots[:1], args.max_tokens)
    mixed = decode(engine, slots, args.max_tokens)
    mib = 1 << 20
    print(f"model {args.model} in {choice.dtype} ({choice.reason}), {weights}; {args.adapters} adapters of rank "
          f"{args.rank}")  # fmt: skip
    print(f"RSS before loading: {before:.0f} MiB; base resident: +{with_base - before:.0f} MiB "
          f"(weights {base_bytes / mib:.0f} MiB); {args.adapters} adapters: +{with_adapters - with_base:.0f} MiB "
          f"(their tensors {adapter_bytes / mib:.1f} MiB; merged copies would need "
          f"{args.adapters * base_bytes / mib:.0f} MiB)")  # fmt: skip
    print("| batch of 32 | tokens/s | vs base alone |")
    print("|---|---|---|")
    for label, v in (("base only", plain), ("one adapter", one), (f"{args.adapters} adapters mixed", mixed)):
        print(f"| {label} | {v:.1f} | {v / plain:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
