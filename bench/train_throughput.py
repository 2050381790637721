"""Training throughput: our trainer vs Hugging Face ``Trainer`` + peft, measured in the same run.

    .venv/bin/python bench/train_throughput.py [--steps 20] [--model DIR] [--dtype auto|float32|bfloat16]

Both train the same LoRA (rank, alpha, target modules) on the same base model, the same tokenised
toy-dataset examples (chat template, assistant-only labels), the same global batch and the same
dtype (``auto``: the shared policy of runtime/hardware.py, resolved once here for both), for the
same number of optimizer steps, each in its own process. The baseline is what a careful user would
write: ``Trainer`` with ``DataCollatorForSeq2Seq`` padding each batch, a bf16 base when the dtype is
bf16 — run twice, with ``bf16=True`` (autocast) and without, the faster being the baseline — and
length-grouped batches (``train_sampling_strategy="group_by_length"``), as ours groups by length.
Both are timed over the training loop only (ours from its first step; the baseline from
``on_train_begin``, after Trainer set-up, to ``on_train_end``).
Reported: training tokens/s (real, unpadded tokens over the loop), peak RSS of each process, and the
ratio ours / baseline. With ``--repeats N`` each side runs N times, alternating (ours, baseline,
ours, ...), so a noisy neighbour on a shared machine hits both; the best run of each is compared.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def dataset_dir(model: str, root: Path) -> Path:
    from transformers import AutoTokenizer

    from training.ingest import ingest

    tok = AutoTokenizer.from_pretrained(model)
    return ingest(REPO / "data/toy/train.jsonl", root, name="toy", eval_source=REPO / "data/toy/eval.jsonl",
                  tokenizer=tok).path  # fmt: skip


def run_measured(cmd: list[str]) -> tuple[int, float]:
    """Run ``cmd``; return (exit code, peak RSS in MiB) of that process alone (wait4 rusage)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(("step ", "BENCH")):
            print("   ", line.rstrip(), flush=True)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss / 1024


def ours(args: argparse.Namespace, ds: Path, out: Path) -> dict[str, float]:
    cmd = [sys.executable, "-m", "training.finetune", "--base-model", args.model, "--dataset", str(ds),
           "--out-dir", str(out), "--max-steps", str(args.steps), "--global-batch-size", str(args.global_batch),
           "--micro-batch-size", str(args.global_batch), "--checkpoint-every", "0", "--dtype", args.dtype,
           "--lora-r", "16", "--lora-alpha", "32", "--lora-dropout", "0", "--warmup-steps", "2"]  # fmt: skip
    code, rss = run_measured(cmd)
    if code:
        raise SystemExit(f"our trainer failed with exit code {code}")
    result = json.loads((out / "result.json").read_text())
    return {"tokens_per_sec": result["tokens_per_sec"], "seconds": result["train_seconds"], "peak_rss_mib": rss}


def hf_worker(args: argparse.Namespace) -> None:
    """The baseline, in its own process: transformers.Trainer + peft, as a user would write it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from training.batching import encode_chat
    from training.config import DEFAULT_TARGETS
    from training.ingest import load_split

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(args.model)
    rows = [encode_chat(tok, r.messages, 512) for r in load_split(Path(args.dataset), "train")]
    data = [{"input_ids": e.input_ids, "attention_mask": [1] * len(e.input_ids), "labels": e.labels} for e in rows]
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype)
    lora = LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.0, target_modules=list(DEFAULT_TARGETS), task_type="CAUSAL_LM"
    )
    model = get_peft_model(model, lora)
    import dataclasses

    # Length-grouped batches: transformers 5.24 names it train_sampling_strategy, earlier ones group_by_length.
    known = {f.name for f in dataclasses.fields(TrainingArguments)}
    grouped = ({"train_sampling_strategy": "group_by_length"} if "train_sampling_strategy" in known
               else {"group_by_length": True})  # fmt: skip
    targs = TrainingArguments(
        output_dir=args.out, max_steps=args.steps, per_device_train_batch_size=args.global_batch,
        gradient_accumulation_steps=1, learning_rate=2e-3, warmup_steps=2, lr_scheduler_type="cosine",
        logging_steps=10_000, save_strategy="no", report_to=[], dataloader_num_workers=0, seed=0,
        bf16=dtype == torch.bfloat16 and args.autocast, use_cpu=not torch.cuda.is_available(), **grouped,
    )  # fmt: skip
    loop: dict[str, float] = {}

    class LoopTimer(TrainerCallback):  # type: ignore[misc]
        def on_train_begin(self, *a: object, **k: object) -> None:
            loop["start"] = time.perf_counter()

        def on_train_end(self, *a: object, **k: object) -> None:
            loop["end"] = time.perf_counter()

    trainer = Trainer(model=model, args=targs, train_dataset=data, callbacks=[LoopTimer()],
                      data_collator=DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100))  # fmt: skip
    # Tokens the loop actually consumed: count them in the collator's batches.
    seen = {"tokens": 0}
    collate = trainer.data_collator

    def counting(features: list[dict]) -> dict:
        seen["tokens"] += sum(len(f["input_ids"]) for f in features)
        return collate(features)

    trainer.data_collator = counting
    trainer.train()
    seconds = loop["end"] - loop["start"]
    print(f"BENCH {json.dumps({'tokens': seen['tokens'], 'seconds': seconds})}", flush=True)
    Path(args.out, "bench.json").write_text(
        json.dumps({"tokens_per_sec": seen["tokens"] / seconds, "seconds": seconds})
    )


def baseline(args: argparse.Namespace, ds: Path, out: Path, autocast: bool) -> dict[str, float]:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, __file__, "--hf-worker", "--model", args.model, "--dataset", str(ds), "--out", str(out),
           "--steps", str(args.steps), "--global-batch", str(args.global_batch), "--dtype", args.dtype,
           *(["--autocast"] if autocast else [])]  # fmt: skip
    code, rss = run_measured(cmd)
    if code:
        raise SystemExit(f"baseline failed with exit code {code}")
    result = json.loads((out / "bench.json").read_text())
    return {**result, "peak_rss_mib": rss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="base model folder (default: the pulled SmolLM2)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--global-batch", type=int, default=16)
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each side, alternating; best is compared")
    parser.add_argument("--hf-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--autocast", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dataset", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hf_worker:
        hf_worker(args)
        return
    if not args.model:
        from training.base_model import default_model_dir

        args.model = default_model_dir()
    from runtime.hardware import choose, cpu_info

    choice = choose(args.dtype, training=True)
    args.dtype = choice.dtype  # both sides get the same, resolved dtype
    print(f"dtype {choice.dtype} on {choice.device}: {choice.reason}; CPU {cpu_info()[0]}")
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        ds = dataset_dir(args.model, Path(tmp) / "datasets")
        print(f"model {args.model}, {args.steps} steps x {args.global_batch} sequences, {args.dtype}")
        # With a bf16 base, HF runs both ways a user might set it (bf16=True autocast, or bf16 weights
        # alone); the faster of the two is the baseline.
        variants = {"HF, bf16 autocast": True, "HF, bf16 weights": False} if args.dtype == "bfloat16" else {"HF": False}
        runs: dict[str, list[dict[str, float]]] = {"ours": [], **{name: [] for name in variants}}
        for i in range(args.repeats):
            print(f"ours (training.finetune), run {i + 1}/{args.repeats}:")
            runs["ours"].append(ours(args, ds, Path(tmp) / f"ours-{i}"))
            for name, autocast in variants.items():
                print(f"baseline {name} (transformers.Trainer + peft), run {i + 1}/{args.repeats}:")
                runs[name].append(baseline(args, ds, Path(tmp) / f"hf-{name[-4:]}-{i}", autocast))
    print(f"\n{'':24}{'tokens/s (best)':>16}{'all runs':>18}{'loop s':>9}{'peak RSS MiB':>14}")
    best = {}
    for name, results in runs.items():
        best[name] = r = max(results, key=lambda x: x["tokens_per_sec"])
        every = " / ".join(f"{x['tokens_per_sec']:.0f}" for x in results)
        print(f"{name:24}{r['tokens_per_sec']:>16.0f}{every:>18}{r['seconds']:>9.1f}{r['peak_rss_mib']:>14.0f}")
    fastest = max(variants, key=lambda n: best[n]["tokens_per_sec"])
    ratio = best["ours"]["tokens_per_sec"] / best[fastest]["tokens_per_sec"]
    print(f"ratio ours / fastest baseline ({fastest}; best runs): {ratio:.2f}x")


if __name__ == "__main__":
    main()
