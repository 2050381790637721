"""How a fine-tuning run is described: one dataclass, resolved once as defaults < YAML recipe < flags.

The resolved config is saved beside every checkpoint (``config.json``) and logged to MLflow, so a
run can be reproduced or resumed from its folder alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_type_hints

#: Llama's projections: what ``auto`` finds on SmolLM2 (training/targets.py).
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class ConfigError(ValueError):
    """A setting of the run is invalid; the message names the flag."""


@dataclass
class TrainConfig:
    """A LoRA fine-tuning run."""

    base_model: str = ""
    """Local Hugging Face folder (or hub id) of the base causal LM."""
    dataset: str = ""
    """Dataset folder written by `lifecycle ingest` (holds train.jsonl and eval.jsonl)."""
    out_dir: str = ""
    """Where checkpoints, the adapter and metrics go."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scaling numerator (scale = alpha / r)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA input (0 by default: on CPU its random masks cost ~17% of a step)."""
    target_modules: list[str] = field(default_factory=lambda: ["auto"])
    """Layers that get adapters: auto (every linear layer of the attention and MLP blocks, found in
    the model), all-linear (peft's rule), or layer names (q_proj v_proj, or q_proj,v_proj)."""
    epochs: float = 3.0
    """Passes over the training split (ignored when max_steps > 0)."""
    max_steps: int = 0
    """Optimizer steps; 0 derives them from epochs."""
    learning_rate: float = 2e-3
    """Peak learning rate after warm-up."""
    min_lr_ratio: float = 0.1
    """Cosine decay ends at learning_rate * min_lr_ratio."""
    warmup_steps: int = 10
    """Linear warm-up steps."""
    weight_decay: float = 0.0
    """AdamW weight decay on the adapters."""
    global_batch_size: int = 16
    """Sequences per optimizer step, over all processes."""
    micro_batch_size: int = 16
    """Sequences per forward pass in one process; accumulation fills the global batch."""
    max_seq_len: int = 512
    """Longer examples are truncated (ingest rejects them first)."""
    grad_clip: float = 1.0
    """Max gradient norm; 0 disables clipping."""
    seed: int = 0
    """Seeds data order, LoRA init and dropout."""
    checkpoint_every: int = 50
    """Save a resumable checkpoint every this many steps (0: only at the end)."""
    log_every: int = 1
    """Log loss / lr / tokens per second every this many steps."""
    attention: Literal["auto", "eager", "sdpa"] = "auto"
    """Attention kernel: auto is eager on CPU in bfloat16 while the attention matrices of a
    micro-batch fit in 1 GiB (faster than SDPA's bf16 CPU kernels), else SDPA; SDPA on CUDA."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Base-model dtype: auto is bfloat16 on CUDA and on CPUs with native bf16, else float32."""
    merge: bool = False
    """Also write merged full weights (base + adapter) to out_dir/merged."""
    resume: bool = False
    """Continue from the latest checkpoint in out_dir."""
    mlflow_run_id: str = ""
    """MLflow run that rank 0 logs metrics to (set by the launcher)."""
    tracking_uri: str = ""
    """MLflow tracking URI used with mlflow_run_id."""

    def __post_init__(self) -> None:
        self._coerce_numbers()
        positive = ("lora_r", "lora_alpha", "global_batch_size", "micro_batch_size", "max_seq_len", "log_every")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        for name in ("max_steps", "warmup_steps", "checkpoint_every", "weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"--lora-dropout must be in [0, 1), got {self.lora_dropout}")
        if self.learning_rate <= 0:
            raise ConfigError(f"--learning-rate must be > 0, got {self.learning_rate}")
        if self.epochs <= 0 and self.max_steps == 0:
            raise ConfigError("--epochs must be > 0 (or set --max-steps)")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"--min-lr-ratio must be in [0, 1], got {self.min_lr_ratio}")
        hints = get_type_hints(TrainConfig)
        for f in fields(self):
            choices = get_args(hints[f.name]) if getattr(hints[f.name], "__origin__", None) is Literal else ()
            if choices and getattr(self, f.name) not in choices:
                raise ConfigError(
                    f"--{f.name.replace('_', '-')} must be one of {', '.join(choices)}, got {getattr(self, f.name)!r}"
                )
        from training.targets import TargetError, parse

        try:
            self.target_modules = parse(self.target_modules)
        except TargetError as exc:
            raise ConfigError(f"--{exc}") from None

    def _coerce_numbers(self) -> None:
        """Values from JSON (Kafka events, REST conf) may be 2.0 for an int or "3" for a number."""
        hints = get_type_hints(TrainConfig)
        for f in fields(self):
            value, kind = getattr(self, f.name), hints[f.name]
            if kind not in (int, float) or isinstance(value, bool):
                continue
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise ConfigError(f"--{f.name.replace('_', '-')} must be a number, got {value!r}") from None
            if kind is int:
                if not number.is_integer():
                    raise ConfigError(f"--{f.name.replace('_', '-')} must be an integer, got {value!r}")
                number = int(number)
            setattr(self, f.name, number)

    def check_world(self, world_size: int) -> None:
        if self.global_batch_size % world_size:
            raise ConfigError(
                f"--global-batch-size {self.global_batch_size} must be divisible by "
                f"the number of processes ({world_size})"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2))


def make_parser() -> argparse.ArgumentParser:
    """Flags for every field, with the field docstrings as help; unset flags stay None."""
    parser = argparse.ArgumentParser(description="LoRA fine-tuning (run under torchrun for DDP).")
    parser.add_argument("--config", type=Path, help="YAML recipe; flags override it.")
    hints = get_type_hints(TrainConfig)
    docs = {k: v.replace("%", "%%") for k, v in _field_docs().items()}  # argparse formats help with %
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=docs.get(f.name))
        elif getattr(kind, "__origin__", None) is list:
            parser.add_argument(flag, nargs="+", default=None, help=docs.get(f.name))
        elif getattr(kind, "__origin__", None) is Literal:
            parser.add_argument(flag, choices=get_args(kind), default=None, help=docs.get(f.name))
        else:
            parser.add_argument(flag, type=kind, default=None, help=docs.get(f.name))
    return parser


def _field_docs() -> dict[str, str]:
    """Attribute docstrings (the string literal under each field) as help texts."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(TrainConfig))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for prev, node in itertools.pairwise(body):
        if (
            isinstance(prev, ast.AnnAssign)
            and isinstance(prev.target, ast.Name)
            and isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
        ):
            docs[prev.target.id] = str(node.value.value)
    return docs


def resolve(args: argparse.Namespace | None = None, **overrides: Any) -> TrainConfig:
    """defaults < YAML recipe (``--config``) < flags < keyword overrides."""
    values: dict[str, Any] = {}
    names = {f.name for f in fields(TrainConfig)}
    if args is not None and getattr(args, "config", None):
        import yaml

        recipe = yaml.safe_load(Path(args.config).read_text()) or {}
        unknown = sorted(set(recipe) - names)
        if unknown:
            raise ConfigError(f"{args.config}: unknown key {unknown[0]!r}")
        values.update(recipe)
    if args is not None:
        values.update({k: v for k, v in vars(args).items() if k in names and v is not None})
    values.update(overrides)
    return TrainConfig(**values)


def load(path: Path) -> TrainConfig:
    return TrainConfig(**json.loads(path.read_text()))
