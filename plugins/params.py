"""The lifecycle DAGs' params in one place: their JSON schema (the trigger form is drawn from it), the
defaults every DAG shares, and the allow-list of params a Kafka event may override.

An event's ``params`` are checked here before anything runs: a key not in ``EVENT_PARAMS`` or a
value outside its schema is refused with the key named (the gate's margin and confidence, the model
name, the backend and the base model are the platform operator's, not any producer's, unless the
operator names them in ``LIFECYCLE_EVENT_PARAMS``).
"""

from __future__ import annotations

from typing import Any

#: JSON schema of every param (title and description are what the trigger form shows). An optional
#: param has a nullable type: Airflow's form treats an empty ``string`` field as missing and keeps
#: its Trigger button disabled, while an empty nullable field is submitted as null.
SCHEMA: dict[str, dict[str, Any]] = {
    "dataset_path": {"default": "", "type": "string", "title": "Training data",
                     "description": "JSONL (chat or instruction records): a path or file:// URI on the workers."},
    "eval_path": {"default": None, "type": ["null", "string"], "title": "Held-out eval data",
                  "description": "Optional JSONL of eval questions; empty: 10 % of the training data."},
    "dataset_name": {"default": "dataset", "type": "string", "minLength": 1, "maxLength": 64,
                     "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]*$", "title": "Dataset name"},
    "base_model": {"default": None, "type": ["null", "string"], "title": "Base model",
                   "description": "Hub id or local folder; empty: LIFECYCLE_BASE_MODEL (SmolLM2-135M-Instruct)."},
    "lora_r": {"default": 16, "type": "integer", "minimum": 1, "maximum": 256, "title": "LoRA rank"},
    "lora_alpha": {"default": 32, "type": "integer", "minimum": 1, "maximum": 1024, "title": "LoRA alpha"},
    "lora_dropout": {"default": 0.0, "type": "number", "minimum": 0, "maximum": 0.5, "title": "LoRA dropout"},
    "target_modules": {"default": "auto", "type": "string", "pattern": "^[A-Za-z0-9_.,-]+$",
                       "title": "LoRA target layers",
                       "description": "auto: every linear layer of attention and MLP found in the model; "
                                      "all-linear; or names, comma-separated (q_proj,v_proj)."},
    "epochs": {"default": 5.0, "type": "number", "exclusiveMinimum": 0, "maximum": 100, "title": "Epochs"},
    "learning_rate": {"default": 2e-3, "type": "number", "exclusiveMinimum": 0, "maximum": 1,
                      "title": "Learning rate"},
    "max_steps": {"default": 0, "type": "integer", "minimum": 0, "maximum": 1000000, "title": "Max steps",
                  "description": "Stop after this many optimizer steps (0: run the epochs)."},
    "dtype": {"default": "auto", "type": "string", "enum": ["auto", "float32", "bfloat16"], "title": "dtype",
              "description": "auto: bf16 on CUDA and on CPUs measured to compute bf16 natively, else float32."},
    "attention": {"default": "auto", "type": "string", "enum": ["auto", "eager", "sdpa"],
                  "title": "Attention kernel"},
    "nproc": {"default": 1, "type": "integer", "minimum": 1, "maximum": 64, "title": "Processes",
              "description": "torchrun --nproc-per-node (GPUs per pod on Kubernetes)."},
    "backend": {"default": "local", "type": "string", "enum": ["local", "kubernetes"], "title": "Training backend"},
    "nodes": {"default": 1, "type": "integer", "minimum": 1, "maximum": 64, "title": "Nodes",
              "description": "Training nodes; more than 1 runs an indexed Job of that many pods (kubernetes)."},
    "promotion_margin": {"default": 0.0, "type": "number", "minimum": -1, "maximum": 1, "title": "Promotion margin",
                         "description": "Score the candidate must gain over the champion (paired, per item)."},
    "promotion_confidence": {"default": 0.95, "type": "number", "minimum": 0.5, "maximum": 0.999,
                             "title": "Gate confidence",
                             "description": "Promote only when a paired test says the candidate is better by the "
                                            "margin at this confidence (exact McNemar / paired bootstrap)."},
    "rollout_policy": {"default": None, "type": ["null", "string"], "enum": [None, "direct", "shadow", "canary"],
                       "title": "Rollout",
                       "description": "How a version that passes the gate reaches users: direct, canary (steps of "
                                      "users decided on live evidence) or shadow (mirrored first). "
                                      "Empty: LIFECYCLE_ROLLOUT_POLICY."},
    "eval_limit": {"default": 0, "type": "integer", "minimum": 0, "title": "Eval items",
                   "description": "0: the whole eval split."},
    "model_name": {"default": None, "type": ["null", "string"], "pattern": "^([A-Za-z0-9][A-Za-z0-9._-]{0,99})?$",
                   "title": "Registered model name", "description": "empty: LIFECYCLE_MODEL_NAME."},
}  # fmt: skip

#: What a ``lifecycle.training-data`` event may set in its ``params``: the training recipe, never
#: the gate, the backend, the base model or the registered model.
EVENT_PARAMS = frozenset({
    "dataset_name", "lora_r", "lora_alpha", "lora_dropout", "target_modules", "epochs", "learning_rate",
    "max_steps", "dtype", "attention", "nproc", "eval_limit",
})  # fmt: skip

#: Params the pipeline tasks read, with their defaults: every lifecycle DAG gets these.
PIPELINE = ("lora_r", "lora_alpha", "lora_dropout", "target_modules", "epochs", "learning_rate", "max_steps",
            "dtype", "attention", "nproc", "backend", "nodes", "promotion_margin", "promotion_confidence",
            "rollout_policy", "eval_limit")  # fmt: skip


class ParamsError(ValueError):
    """An event's params were refused; the message names the key."""


def form(*names: str, **overrides: Any) -> dict[str, Any]:
    """``Param`` objects of ``names`` for a trigger form; ``overrides`` change defaults."""
    from airflow.sdk import Param

    out = {}
    for name in names:
        spec = dict(SCHEMA[name])
        default = overrides.get(name, spec.pop("default"))
        spec.pop("default", None)
        out[name] = Param(default, **spec)
    return out


def check_event_params(raw: Any, extra: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The allowed, schema-valid params of an event; ParamsError naming the first bad key. ``extra``:
    params the operator lets events set too (``LIFECYCLE_EVENT_PARAMS``)."""
    import jsonschema

    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ParamsError(f"params must be an object, got {type(raw).__name__}")
    allowed = EVENT_PARAMS | (set(extra) & set(SCHEMA))
    refused = sorted(set(raw) - allowed)
    if refused:
        raise ParamsError(
            f"params.{refused[0]} may not be set by an event (allowed: {', '.join(sorted(allowed))}; "
            "an operator can allow more with LIFECYCLE_EVENT_PARAMS)"
        )
    for key, value in raw.items():
        schema = {k: v for k, v in SCHEMA[key].items() if k not in ("default", "title", "description")}
        if isinstance(value, list) and key == "target_modules":
            value = ",".join(str(v) for v in value)
        try:
            jsonschema.validate(value, schema)
        except jsonschema.ValidationError as exc:
            raise ParamsError(f"params.{key}: {exc.message}") from None
    return {k: ",".join(map(str, v)) if isinstance(v, list) else v for k, v in raw.items()}
