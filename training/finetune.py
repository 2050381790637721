"""LoRA fine-tuning of a causal LM, one process or many under torchrun (DDP).

    python -m training.finetune --base-model DIR --dataset DS_DIR --out-dir OUT
    torchrun --nproc-per-node 2 -m training.finetune --base-model DIR --dataset DS_DIR --out-dir OUT
    ... --resume                       # continue after a crash from the latest checkpoint in OUT

DDP is detected from torchrun's ``RANK``/``WORLD_SIZE``: gloo on CPU, nccl on GPU, the same code
for one process. Only rank 0 writes files and logs. Reads top to bottom: ``setup()`` (data, model,
optimizer, resume) -> ``fit()`` (the loop, then the adapter); the world and the checkpoints are in
``training/checkpoint.py``.

Why the loss is computed here and not by the model: the loss of a global batch is the sum over its
assistant tokens divided by their count in the *whole* global batch, so any split into processes
and micro-batches gives the same gradient as one process would; and the LM head (a 49k-row matrix
for SmolLM2) is applied only at positions that have a label, not to every prompt token.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import nn

from training.batching import IGNORE, Example, collate, encode_chat, global_batches, micro_batches, shard
from training.checkpoint import Dist, barrier, latest_checkpoint, load_checkpoint, save_checkpoint, setup_distributed
from training.config import ConfigError, TrainConfig, make_parser, resolve
from training.ingest import load_split

#: Config keys of models whose logits are more than ``head(hidden)`` (scaled or soft-capped).
_LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


class AssistantLoss(nn.Module):
    """Summed cross-entropy over labelled positions; the LM head runs only where there is a label
    (the backbone and head are found the same way for every architecture: ``base_model`` and
    ``get_output_embeddings``). Models that post-process logits go through their full forward."""

    def __init__(self, peft_model: nn.Module) -> None:
        super().__init__()
        self.peft_model = peft_model
        causal_lm = peft_model.get_base_model()  # type: ignore[operator]
        self.split = not any(getattr(causal_lm.config, k, None) for k in _LOGIT_POSTPROCESSING)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        causal_lm = self.peft_model.get_base_model()  # type: ignore[operator]
        targets = labels[:, 1:]
        keep = targets != IGNORE
        if self.split:
            backbone, head = causal_lm.base_model, causal_lm.get_output_embeddings()
            hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
            logits = head(hidden[:, :-1][keep]).float()
        else:
            logits = causal_lm(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
            logits = logits[:, :-1][keep].float()
        return F.cross_entropy(logits, targets[keep], reduction="sum")


def compute_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype:
    """The base model's dtype: ``cfg.dtype`` once ``choose_dtype`` has resolved ``auto``. bf16 gave
    ~1.7x faster steps on SmolLM2 on a CPU with native bf16; the LoRA weights stay float32."""
    from runtime.hardware import choose

    return choose(cfg.dtype, device.type, training=True).torch_dtype()


def choose_dtype(cfg: TrainConfig, dist: Dist) -> str:
    """Resolve ``cfg.dtype == "auto"`` by the shared hardware policy (runtime/hardware.py) on rank 0
    and give every rank the same answer; returns the reason, which rank 0 prints and keeps."""
    from runtime.hardware import choose

    payload: list[Any] = [None]
    if dist.is_main:
        choice = choose(cfg.dtype, dist.device.type, training=True)
        payload = [(choice.dtype, choice.reason)]
    if dist.enabled:
        torch_dist.broadcast_object_list(payload, src=0)
    cfg.dtype, reason = payload[0]
    return str(reason)


#: Bytes of eager attention state per score element kept for backward (fp32 softmax + bf16 copy + grads).
_EAGER_BYTES_PER_SCORE = 8
EAGER_ATTENTION_BUDGET = 1 << 30


def attention_kernel(
    cfg: TrainConfig, device: torch.device, model_config: Any, longest: int, dtype: torch.dtype = torch.bfloat16
) -> str:
    """eager or sdpa. On CPU in bf16, SmolLM2 steps ran 1.2x faster with eager attention than with
    SDPA's flash kernel (its bf16 backward is slow; measured at 60 and 512 tokens); in float32 both
    ran at the same speed (bench/train_ablation.py), so SDPA is kept there. Eager keeps every layer's
    score matrices for backward, so it is used only while those fit in EAGER_ATTENTION_BUDGET for the
    longest micro-batch of the run."""
    if cfg.attention != "auto":
        return cfg.attention
    if device.type == "cuda" or dtype != torch.bfloat16:
        return "sdpa"
    heads = getattr(model_config, "num_attention_heads", 1)
    layers = getattr(model_config, "num_hidden_layers", 1)
    scores = layers * cfg.micro_batch_size * heads * longest * longest
    return "eager" if scores * _EAGER_BYTES_PER_SCORE <= EAGER_ATTENTION_BUDGET else "sdpa"


def load_model(cfg: TrainConfig, device: torch.device, longest: int | None = None) -> nn.Module:
    """Base model + LoRA adapters (peft), with the fused LoRA forward; ``longest`` is the longest
    training sequence, which picks the attention kernel."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from training.fused_lora import fuse_lora
    from training.targets import TargetError
    from training.targets import resolve as resolve_targets

    dtype = compute_dtype(cfg, device)
    model_config = AutoConfig.from_pretrained(cfg.base_model)
    attention = attention_kernel(cfg, device, model_config, longest or cfg.max_seq_len, dtype)
    base = AutoModelForCausalLM.from_pretrained(cfg.base_model, dtype=dtype, attn_implementation=attention)
    try:
        targets = resolve_targets(cfg.target_modules, base)
    except TargetError as exc:
        raise ConfigError(f"--target-modules: {exc}") from None
    torch.manual_seed(cfg.seed)  # identical LoRA init on every rank and on resume
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(base, lora).to(device)
    fuse_lora(model)
    return model


def lr_at(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """Linear warm-up to learning_rate, then cosine decay to learning_rate * min_lr_ratio."""
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.learning_rate * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


# -- the loop ---------------------------------------------------------------------------------


@dataclass
class FitResult:
    steps: int
    final_loss: float
    tokens_per_sec: float
    train_seconds: float
    adapter_dir: Path


class MetricsSink:
    """Rank 0: each logged step to ``metrics.jsonl`` at once and, when a run id is given, to MLflow
    in batches (one request per ``flush_seconds`` instead of one per step: on a 2-core machine the
    tracking server's work competes with training). Each metric keeps its step and timestamp."""

    MAX_BATCH = 900  # MLflow's log_batch takes at most 1000 metrics per request

    def __init__(self, cfg: TrainConfig, out_dir: Path, flush_seconds: float = 10.0) -> None:
        self.file = (out_dir / "metrics.jsonl").open("a")
        self.client = None
        self.pending: list[Any] = []
        self.flush_seconds, self.last_flush = flush_seconds, time.monotonic()
        if cfg.mlflow_run_id:
            from mlflow import MlflowClient

            self.client = MlflowClient(cfg.tracking_uri or None)
            self.run_id = cfg.mlflow_run_id

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.file.write(json.dumps({"step": step, **metrics}) + "\n")
        self.file.flush()
        if self.client is not None:
            from mlflow.entities import Metric

            ts = int(time.time() * 1000)
            self.pending.extend(Metric(k, v, ts, step) for k, v in metrics.items())
            if time.monotonic() - self.last_flush >= self.flush_seconds or len(self.pending) >= self.MAX_BATCH:
                self.flush()

    def flush(self) -> None:
        if self.client is not None:
            for i in range(0, len(self.pending), self.MAX_BATCH):
                self.client.log_batch(self.run_id, metrics=self.pending[i : i + self.MAX_BATCH])
        self.pending.clear()
        self.last_flush = time.monotonic()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self.file.close()


@dataclass
class Prepared:
    """What ``setup`` makes ready for ``fit``: the encoded data, its schedule, the model (DDP-wrapped
    loss when distributed), the optimizer, and the step to start at (after a resume)."""

    tokenizer: Any
    examples: list[Example]
    lengths: list[int]
    steps_per_epoch: int
    total_steps: int
    model: nn.Module
    loss_fn: nn.Module
    optimizer: Any
    trainable: list[nn.Parameter]
    start: int
    dtype_reason: str = ""


def setup(cfg: TrainConfig, dist: Dist) -> Prepared:
    """Check the config against the world, encode the training split, load the model with its LoRA
    adapters and the optimizer, and resume from the latest checkpoint when asked."""
    from transformers import AutoTokenizer

    cfg.check_world(dist.world_size)
    reason = choose_dtype(cfg, dist)
    out_dir = Path(cfg.out_dir)
    if dist.is_main:
        print(f"dtype {cfg.dtype} on {dist.device.type}: {reason}", flush=True)
        out_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(out_dir / "config.json")
    tokenizer = AutoTokenizer.from_pretrained(cfg.base_model)
    examples: list[Example] = [
        encode_chat(tokenizer, r.messages, cfg.max_seq_len) for r in load_split(Path(cfg.dataset), "train")
    ]
    lengths = [len(e.input_ids) for e in examples]
    steps_per_epoch = len(global_batches(lengths, cfg.global_batch_size, cfg.seed, 0))
    if steps_per_epoch == 0:
        raise ValueError(f"{len(examples)} training examples do not fill one global batch of {cfg.global_batch_size}")
    total_steps = cfg.max_steps or math.ceil(cfg.epochs * steps_per_epoch)

    model = load_model(cfg, dist.device, longest=max(lengths))
    trainable = [p for p in model.parameters() if p.requires_grad]
    # fused: one kernel for the whole update instead of a dozen ops per adapter tensor
    optimizer = torch.optim.AdamW(trainable, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, fused=True)
    start = 0
    if cfg.resume and (ckpt := latest_checkpoint(out_dir)) is not None:
        start = load_checkpoint(ckpt, model, optimizer, dist)
        if dist.is_main:
            print(f"resumed from {ckpt.name}: continuing at step {start + 1}/{total_steps}", flush=True)
    else:
        torch.manual_seed(cfg.seed + 1 + dist.rank)  # dropout streams differ per rank, reproducibly
    loss_fn: nn.Module = AssistantLoss(model)
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        loss_fn = DistributedDataParallel(loss_fn, device_ids=[dist.device] if dist.device.type == "cuda" else None)
    return Prepared(tokenizer, examples, lengths, steps_per_epoch, total_steps, model, loss_fn, optimizer, trainable,
                    start, reason)  # fmt: skip


def fit(cfg: TrainConfig, dist: Dist, prep: Prepared) -> FitResult:
    """The training loop from ``prep.start`` to the last step; the adapter and ``result.json`` at the end."""
    out_dir = Path(cfg.out_dir)
    tokenizer, examples, lengths, steps_per_epoch = prep.tokenizer, prep.examples, prep.lengths, prep.steps_per_epoch
    total_steps, model, loss_fn, optimizer = prep.total_steps, prep.model, prep.loss_fn, prep.optimizer
    trainable, start = prep.trainable, prep.start
    model.train()

    # With a bf16 base, autocast runs the fp32 LoRA matmuls in bf16 too instead of casting every
    # activation up to fp32; the adapters and the optimizer state stay fp32.
    dtype = compute_dtype(cfg, dist.device)
    autocast = torch.autocast(dist.device.type, dtype=dtype) if dtype == torch.bfloat16 else nullcontext()
    sink = MetricsSink(cfg, out_dir) if dist.is_main else None
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    epoch_cache: dict[int, list[list[int]]] = {}
    loss_value, t_start, tokens_seen = float("nan"), time.perf_counter(), 0
    last_line = time.monotonic()
    try:
        for step in range(start, total_steps):
            t0 = time.perf_counter()
            epoch, index = divmod(step, steps_per_epoch)
            if epoch not in epoch_cache:
                epoch_cache = {epoch: global_batches(lengths, cfg.global_batch_size, cfg.seed, epoch)}
            batch = epoch_cache[epoch][index]
            n_targets = sum(examples[i].target_tokens for i in batch)
            lr = lr_at(step, cfg, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            mine = micro_batches(shard(batch, dist.rank, dist.world_size), cfg.micro_batch_size)
            loss_sum = torch.zeros((), device=dist.device)
            for j, indices in enumerate(mine):
                inputs = {k: v.to(dist.device) for k, v in collate([examples[i] for i in indices], pad).items()}
                last = j == len(mine) - 1
                sync = nullcontext() if last or not dist.enabled else loss_fn.no_sync()  # type: ignore[operator]
                with sync, autocast:
                    token_loss = loss_fn(**inputs)
                    # DDP averages gradients over ranks; scaling by world size makes that a sum.
                    (token_loss * dist.world_size / n_targets).backward()
                loss_sum += token_loss.detach().float()
            if dist.enabled:
                torch_dist.all_reduce(loss_sum)
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss_value = loss_sum.item() / n_targets
            step_tokens = sum(lengths[i] for i in batch)
            tokens_seen += step_tokens
            if sink is not None and ((step + 1) % cfg.log_every == 0 or step + 1 == total_steps):
                tps = step_tokens / (time.perf_counter() - t0)
                epoch_f = step / steps_per_epoch
                sink.log(step + 1, {"loss": loss_value, "lr": lr, "tokens_per_sec": tps, "epoch": epoch_f})
            # every 5 % and at least every 2 s: the CLI's progress bar follows these lines
            boundary = (step + 1) % max(1, total_steps // 20) == 0 or step + 1 == total_steps
            if dist.is_main and (boundary or time.monotonic() - last_line >= 2.0):
                print(f"step {step + 1}/{total_steps} loss {loss_value:.4f} lr {lr:.2e}", flush=True)
                last_line = time.monotonic()
            if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < total_steps:
                save_checkpoint(out_dir, step + 1, model, optimizer, dist, cfg)
                if sink is not None:
                    sink.flush()
    except BaseException:
        if sink is not None:  # the metrics so far reach MLflow too; the training error is what is raised
            with contextlib.suppress(Exception):
                sink.close()
        raise
    train_seconds = time.perf_counter() - t_start
    adapter_dir = out_dir / "adapter"
    if dist.is_main:
        _save_outputs(cfg, model, tokenizer, out_dir)
        result = {"steps": total_steps, "final_loss": loss_value, "train_seconds": train_seconds,
                  "tokens_per_sec": tokens_seen / max(train_seconds, 1e-9), "world_size": dist.world_size,
                  "dtype": cfg.dtype, "dtype_reason": prep.dtype_reason}  # fmt: skip
        (out_dir / "result.json").write_text(json.dumps(result, indent=2))
    if sink is not None:
        sink.close()
    barrier(dist)
    return FitResult(total_steps, loss_value, tokens_seen / max(train_seconds, 1e-9), train_seconds, adapter_dir)


def _save_outputs(cfg: TrainConfig, model: Any, tokenizer: Any, out_dir: Path) -> None:
    """The adapter (safetensors) and, when asked, merged full weights."""
    adapter = out_dir / "adapter"
    shutil.rmtree(adapter, ignore_errors=True)
    model.save_pretrained(adapter, safe_serialization=True)
    tokenizer.save_pretrained(adapter)
    if cfg.merge:
        merged = out_dir / "merged"
        shutil.rmtree(merged, ignore_errors=True)
        model.merge_and_unload().save_pretrained(merged, safe_serialization=True)
        tokenizer.save_pretrained(merged)


def main(argv: list[str] | None = None) -> int:
    cfg = resolve(make_parser().parse_args(argv))
    dist = setup_distributed()
    try:
        result = fit(cfg, dist, setup(cfg, dist))
        if dist.is_main:
            print(f"done: {result.steps} steps, final loss {result.final_loss:.4f}, "
                  f"{result.tokens_per_sec:.0f} tokens/s, adapter in {result.adapter_dir}", flush=True)  # fmt: skip
    finally:
        if dist.enabled:
            torch_dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
