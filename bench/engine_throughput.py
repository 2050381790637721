"""The serving engine in-process (no gateway, no gRPC) against Hugging Face on the same model and
prompts, in one run: HF ``generate`` on a static batch of all the prompts, HF ``generate`` one
prompt at a time, transformers' own continuous batching (``generate_batch``) where this
transformers has it, and our engine with every prompt submitted at once, at each concurrency.

    .venv/bin/python bench/engine_throughput.py [--model DIR] [--levels 1,32,128] [--max-tokens 32]
        [--device auto] [--dtype auto] [--weights auto] [--repeats 1]

Greedy, fixed ``max_new_tokens`` (EOS ignored by every side, so each makes the same number of
tokens). Prints tokens/s of each and the ratio engine / static batch at each level; with ``--repeats N``
the static batch and ours run N times, alternating, and the best of each counts. Runs on CPU or
CUDA; ``bench/gpu.sh`` runs it on a GPU machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TOPICS = ["a lighthouse keeper", "why the sky is blue", "three uses of a paperclip", "the taste of an orange",
          "a good friend", "a cat", "how bicycles stay upright", "a new gardener"]  # fmt: skip


def prompts(n: int) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": f"Tell me about {TOPICS[i % len(TOPICS)]} (#{i})."}] for i in range(n)]


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def hf_static(model: object, tok: object, convs: list, max_tokens: int, device: str) -> float:
    """tokens/s of one left-padded generate() call over every prompt."""
    import torch

    tok.padding_side = "left"  # type: ignore[attr-defined]
    texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in convs]  # type: ignore[attr-defined]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)  # type: ignore[operator]
    sync(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False,  # type: ignore[attr-defined]
                             pad_token_id=tok.pad_token_id)  # type: ignore[attr-defined]  # fmt: skip
    sync(device)
    made = (out.shape[1] - enc["input_ids"].shape[1]) * out.shape[0]
    return made / (time.perf_counter() - t0)


def hf_generate_batch(model: object, tok: object, convs: list, max_tokens: int, device: str) -> float | None:
    """tokens/s of transformers' continuous batching, None where this version has none."""
    if not hasattr(model, "generate_batch"):
        return None
    from transformers import GenerationConfig

    ids = [tok.apply_chat_template(c, add_generation_prompt=True, tokenize=True, return_dict=False) for c in convs]  # type: ignore[attr-defined]
    cfg = GenerationConfig(max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False,
                           eos_token_id=-1, pad_token_id=tok.pad_token_id)  # type: ignore[attr-defined]  # fmt: skip
    sync(device)
    t0 = time.perf_counter()
    try:
        results = model.generate_batch(inputs=ids, generation_config=cfg)  # type: ignore[attr-defined]
    except Exception as exc:  # noqa: BLE001 - an optional peer: report, do not fail the bench
        print(f"   generate_batch failed: {type(exc).__name__}: {exc}")
        return None
    sync(device)
    made = sum(len(r.generated_tokens) for r in results.values())
    return made / (time.perf_counter() - t0)


def ours(model: object, tok: object, convs: list, max_tokens: int, device: str) -> float:
    from serving.worker.engine import Engine, ModelSlot, SamplingParams

    slot = ModelSlot("bench", "1", model, tok)
    slot.eos_ids = set()  # the same token count as the baselines
    engine = Engine(max_batch=max(len(convs), 1))
    engine.swap(slot)
    made = [0]

    def sink(d: object) -> None:
        made[0] += getattr(d, "completion_tokens", 0) if getattr(d, "finish_reason", "") else 0

    sync(device)
    t0 = time.perf_counter()
    for c in convs:
        engine.submit(messages=c, params=SamplingParams(max_tokens=max_tokens), sink=sink)
    while engine.queued() or engine.running():
        engine.step()
    sync(device)
    return made[0] / (time.perf_counter() - t0)


def main() -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from runtime.hardware import choose

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="")
    ap.add_argument("--levels", default="1,32,128")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--weights", default="auto", help="our engine's base weights, as LIFECYCLE_SERVE_WEIGHTS")
    ap.add_argument("--repeats", type=int, default=1, help="alternating runs of the static batch and ours")
    args = ap.parse_args()
    if not args.model:
        from training.base_model import default_model_dir

        args.model = default_model_dir()
    choice = choose(args.dtype, args.device)
    device = choice.device
    print(f"model {args.model}; {choice.dtype} on {device}: {choice.reason}")
    if device.startswith("cuda"):
        print(f"GPU: {torch.cuda.get_device_name(torch.device(device))}")
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=choice.torch_dtype()).to(device).eval()
    # The engine routes its model's attention through its own KV storage: a copy of its own, so the
    # HF baselines run on a stock model.
    mine_model = AutoModelForCausalLM.from_pretrained(args.model, dtype=choice.torch_dtype()).to(device).eval()
    from serving.worker.loader import quantise

    print(f"ours: {quantise(mine_model, tok, args.weights, 'ours')}")
    ours(mine_model, tok, prompts(2), 2, device)  # warm-up of every path
    hf_static(model, tok, prompts(2), 2, device)
    print("| concurrency | HF static batch | HF one prompt | HF generate_batch | ours | ours / static |")
    print("|---|---|---|---|---|---|")
    for level in [int(x) for x in args.levels.split(",")]:
        convs = prompts(level)
        statics, mines = [], []
        for _ in range(args.repeats):  # alternating: a machine whose speed drifts slows both alike
            statics.append(hf_static(model, tok, convs, args.max_tokens, device))
            mines.append(ours(mine_model, tok, convs, args.max_tokens, device))
        static, mine = max(statics), max(mines)
        if args.repeats > 1:
            runs = ", ".join(f"{a:.1f} / {b:.1f}" for a, b in zip(statics, mines, strict=True))
            print(f"   c={level} runs (static / ours): {runs}; the best of each counts")
        single = hf_static(model, tok, convs[:1], args.max_tokens, device) if level > 1 else static
        batch = hf_generate_batch(model, tok, convs, args.max_tokens, device)
        gb = f"{batch:.1f}" if batch else "-"
        print(f"| {level} | {static:.1f} | {single:.1f} | {gb} | {mine:.1f} | {mine / static:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
