"""Load a model version for serving: from the MLflow registry (a LoRA adapter, served unmerged on its
base model) or a local Hugging Face folder; ``resident.py`` keeps each base model loaded once. Weights
are read from safetensors only, every file of the adapter checked against the sha256 recorded at
training (lifecycle/digests.py); nothing is unpickled and no model code from the registry is run.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from pymongo.errors import PyMongoError

from lifecycle import digests, registry
from lifecycle.names import is_valid_model_name
from lifecycle.settings import Settings
from lifecycle.store import Store
from serving.worker.engine import ModelSlot, SamplingParams
from serving.worker.lora import AdapterError, LoraSet, servable_unmerged

log = logging.getLogger(__name__)


class LoadError(RuntimeError):
    """A version could not be loaded; the message says which and why. The old version keeps serving."""


def check_name(name: str) -> str:
    """A registered model name, refused before it is used in any path."""
    if not is_valid_model_name(name):
        raise LoadError(f"model name {name!r} is not allowed (letters, digits, '_', '-', '.'; no '..' or '/')")
    return name


def resolve_version(settings: Settings, name: str, version: str = "champion") -> str | None:
    """The version number an alias (or number) points at, None when there is none."""
    mc = registry.client(settings.mlflow_tracking_uri)
    if version.isdigit():
        return version
    found = registry.version_by_alias(mc, check_name(name), version)
    return str(found.version) if found is not None else None


def fetch_registered(settings: Settings, store: Store, name: str, version: str) -> tuple[Path, str, str]:
    """Download version ``version`` of ``name`` and verify every file of its adapter against the record
    made at training (lifecycle/digests.py, read from ``store``): (adapter folder, base model, digest)."""

    check_name(name)
    if not version.isdigit():
        raise LoadError(f"version {version!r} of {name} is not a number")
    mc = registry.client(settings.mlflow_tracking_uri)
    try:
        mv = mc.get_model_version(name, version)
    except Exception as exc:  # noqa: BLE001 - MLflow raises its own types for a missing version
        raise LoadError(f"{name} v{version}: not in the registry at {settings.mlflow_tracking_uri}: {exc}") from None
    # A directory of its own: workers on one host (sharing LIFECYCLE_HOME) load the same version at once.
    settings.serving_dir.mkdir(parents=True, exist_ok=True)
    dest = Path(tempfile.mkdtemp(prefix=f"{name}-v{version}-", dir=settings.serving_dir))
    try:
        adapter, rec = digests.fetch(settings, store, str(mv.source), str(mv.run_id), dest, f"{name} v{version}",
                                     legacy=digests.legacy_tags(mv.tags))  # fmt: skip
    except digests.DigestError as exc:
        shutil.rmtree(dest, ignore_errors=True)
        raise LoadError(str(exc)) from None
    except PyMongoError as exc:
        shutil.rmtree(dest, ignore_errors=True)
        raise LoadError(f"{name} v{version}: its artifact record cannot be read from Mongo: {exc}") from None
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return adapter, digests.local_base(settings, rec.base_model), rec.digest


def verify(folder: Path, files: dict[str, str], what: str) -> None:
    """Every recorded file present with its sha256, and no pickled or unrecorded file beside them."""
    try:
        digests.verify(folder, files, what)
    except digests.DigestError as exc:
        raise LoadError(str(exc)) from None


def build_base(base_model: str, device: str = "auto", dtype: str = "auto", what: str = "") -> tuple[Any, Any]:
    """A base model (safetensors only) on the device and in the dtype of the shared policy
    (runtime/hardware.py; SmolLM2 on a CPU with native bf16 decoded 1.8x faster in bf16 than in float32
    at 32 concurrent requests), and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from runtime.hardware import HardwareError, choose

    what = what or base_model
    try:
        choice = choose(dtype, device)
    except HardwareError as exc:
        raise LoadError(f"{what}: {exc}") from None
    log.info("%s in %s on %s: %s", what, choice.dtype, choice.device, choice.reason)
    try:
        tokenizer = AutoTokenizer.from_pretrained(base_model)
        model: Any = AutoModelForCausalLM.from_pretrained(base_model, dtype=choice.torch_dtype(), use_safetensors=True)
    except (OSError, ValueError) as exc:
        raise LoadError(f"{what}: {exc}") from None
    return model.to(choice.torch_device()).eval(), tokenizer


def quantise(model: Any, tokenizer: Any, weights: str, what: str) -> str:
    """Int8 weights for a resident base where ``weights`` (LIFECYCLE_SERVE_WEIGHTS) and this machine call
    for them (runtime/hardware.py decides by a probe, serving/worker/int8.py checks the model's quality);
    returns what was decided and why."""
    from runtime.hardware import Choice, HardwareError, serve_int8
    from serving.worker import int8

    param = next(model.parameters())
    choice = Choice(param.device.type if param.device.index is None else str(param.device),
                    str(param.dtype).removeprefix("torch."), "")  # fmt: skip
    try:
        wanted, reason = serve_int8(weights, choice)
    except HardwareError as exc:
        raise LoadError(f"{what}: {exc}") from None
    log.info("%s: %s", what, reason)
    if not wanted:
        return reason
    import torch

    from serving.worker import fused

    # An int8 product quantises its input whatever its dtype; the rest of a step (norms, rotary, attention,
    # the residual) runs in the model's dtype, and only in float32 do the fused decoder and the C attention
    # take it (fused.py, kv.py). Measured on a 2-core AMD EPYC with native bf16 (bench/engine_throughput.py,
    # SmolLM2-135M, 32 prompts x 32 tokens): int8 with bf16 activations 279 tokens/s, with float32 413.
    dtype = param.dtype
    if param.device.type == "cpu" and dtype != torch.float32:
        model.float()
        if fused.why_not(model):  # no faster path for it in float32: the dtype it was loaded in
            model.to(dtype)
    report = int8.apply(model, tokenizer, "int8" if weights == "int8" else "auto", what)
    if (report is None or not report.kept) and next(model.parameters()).dtype != dtype:
        model.to(dtype)  # float weights kept: served in the dtype chosen for them
    if report is None:
        return reason
    kept = next(model.parameters()).dtype
    return report.reason + (f"; activations in {str(kept).removeprefix('torch.')}" if kept != dtype else "")


def context_length(model: Any) -> int:
    return min(int(getattr(model.config, "max_position_embeddings", 2048) or 2048), 8192)


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "chat_template.json",
                    "special_tokens_map.json", "vocab.json", "merges.txt", "tokenizer.model")  # fmt: skip
_tokenizers: dict[str, Any] = {}  # sha256 of a folder's tokenizer files -> the tokenizer (versions share one)


def adapter_tokenizer(adapter: Path, fallback: Any) -> Any:
    """The tokenizer saved with an adapter (its chat template may differ from the base's), else the
    base's; one tokenizer object per distinct set of tokenizer files (reading one takes ~0.3 s)."""
    import hashlib

    files = [adapter / f for f in _TOKENIZER_FILES if (adapter / f).is_file()]
    if not any(f.name in ("tokenizer.json", "tokenizer_config.json") for f in files):
        return fallback
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    key = h.hexdigest()
    if key not in _tokenizers:
        from transformers import AutoTokenizer

        try:
            _tokenizers[key] = AutoTokenizer.from_pretrained(str(adapter))
        except (OSError, ValueError) as exc:
            raise LoadError(f"{adapter}: unreadable tokenizer: {exc}") from None
    return _tokenizers[key]


def attach_adapter(name: str, version: str, model: Any, tokenizer: Any, adapter: Path, digest: str = "") -> ModelSlot:
    """A slot serving ``adapter`` unmerged on the resident ``model`` (see lora.py), or, for adapter
    kinds that cannot be batched unmerged (DoRA, biases, rank patterns), None: merge into a copy."""
    lora_set = LoraSet.attach(model)
    key = f"{name}@{version}"
    try:
        lora_set.add(key, adapter)
    except AdapterError as exc:
        raise LoadError(f"{name} v{version}: {exc}") from None
    except (OSError, ValueError) as exc:
        raise LoadError(f"{name} v{version}: unreadable adapter: {exc}") from None
    slot = ModelSlot(name, version, model, adapter_tokenizer(adapter, tokenizer), context_length(model), adapter=key,
                     digest=digest)  # fmt: skip
    return slot


def build_slot(
    name: str, version: str, base_model: str, adapter: Path | None, device: str = "auto", dtype: str = "auto"
) -> ModelSlot:
    """A warm slot on a base model of its own: the adapter served unmerged when it is a plain LoRA
    adapter, merged into the weights otherwise."""
    t0 = time.monotonic()
    model, tokenizer = build_base(base_model, device, dtype, f"{name} v{version}")
    if adapter is None:
        slot = ModelSlot(name, version, model, tokenizer, context_length(model))
    elif servable_unmerged(adapter):
        slot = attach_adapter(name, version, model, tokenizer, adapter)
    else:
        from peft import PeftModel

        untie_head(model)
        merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload().eval()
        slot = ModelSlot(name, version, merged, adapter_tokenizer(adapter, tokenizer), context_length(merged))
    warm(slot)
    log.info("%s v%s: loaded and warmed in %.2fs", name, version, time.monotonic() - t0)
    return slot


def untie_head(model: Any) -> None:
    """Give a tied output head its own weight: merging an adapter into a tied head would change the
    input embeddings too (peft applies an ``lm_head`` adapter to the output only)."""
    import torch

    head, embeddings = model.get_output_embeddings(), model.get_input_embeddings()
    if head is not None and embeddings is not None and head.weight is embeddings.weight:
        head.weight = torch.nn.Parameter(head.weight.detach().clone(), requires_grad=False)
        model.config.tie_word_embeddings = False


def warm(slot: ModelSlot) -> None:
    """One short greedy generation, so the first real request does not pay for lazy initialisation."""
    from serving.worker.engine import Engine

    eng = Engine(max_batch=2)
    eng.swap(slot)
    eng.submit(messages=[{"role": "user", "content": "Hello"}], params=SamplingParams(max_tokens=2))
    while eng.queued() or eng.running():
        eng.step()
