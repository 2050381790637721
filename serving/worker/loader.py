"""Load a model version for serving: from the MLflow registry (base + LoRA adapter, merged) or a local
Hugging Face folder. Weights are read from safetensors only, each file checked against the sha256
recorded at registration; nothing is unpickled and no model code from the registry is run.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from lifecycle import registry
from lifecycle.names import is_valid_model_name
from lifecycle.settings import Settings
from serving.worker.engine import ModelSlot, SamplingParams

log = logging.getLogger(__name__)
_PICKLES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


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


def fetch_registered(settings: Settings, name: str, version: str) -> tuple[Path, str]:
    """Download version ``version`` of ``name`` and verify its weights: (adapter folder, base model)."""

    check_name(name)
    if not version.isdigit():
        raise LoadError(f"version {version!r} of {name} is not a number")
    mc = registry.client(settings.mlflow_tracking_uri)
    try:
        mv = mc.get_model_version(name, version)
    except Exception as exc:  # noqa: BLE001 - MLflow raises its own types for a missing version
        raise LoadError(f"{name} v{version}: not in the registry at {settings.mlflow_tracking_uri}: {exc}") from None
    digests = registry.digests_of(mv)
    if not digests:
        raise LoadError(f"{name} v{version}: no sha256 digests recorded at registration; refusing to load it")
    # A directory of its own: workers on one host (sharing LIFECYCLE_HOME) load the same version at once.
    settings.serving_dir.mkdir(parents=True, exist_ok=True)
    dest = Path(tempfile.mkdtemp(prefix=f"{name}-v{version}-", dir=settings.serving_dir))
    try:
        return _download(settings, mv, name, version, dest, digests)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def _download(
    settings: Settings, mv: Any, name: str, version: str, dest: Path, digests: dict[str, str]
) -> tuple[Path, str]:
    import mlflow
    import yaml

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=str(dest)))
    meta = yaml.safe_load((local / "MLmodel").read_text()) if (local / "MLmodel").exists() else None
    if not isinstance(meta, dict) or "python_function" not in meta.get("flavors", {}):
        raise LoadError(f"{name} v{version}: {mv.source} has no readable MLmodel file")
    pyfunc = meta["flavors"]["python_function"]
    adapter = local / pyfunc["artifacts"]["adapter"]["path"]
    base_model = str(pyfunc.get("config", {}).get("base_model") or settings.base_model)
    cached = settings.models_dir / base_model.replace("/", "--")
    if not Path(base_model).is_dir() and cached.is_dir():  # a hub id pulled into the model cache
        base_model = str(cached)
    verify(adapter, digests, f"{name} v{version}")
    return adapter, base_model


def verify(folder: Path, digests: dict[str, str], what: str) -> None:
    """Every recorded weight file present with its sha256, and no pickled weights beside them."""
    if not folder.is_dir():
        raise LoadError(f"{what}: {folder} is missing")
    pickled = [p.name for p in folder.rglob("*") if p.suffix in _PICKLES]
    if pickled:
        raise LoadError(f"{what}: pickled weight files are refused: {', '.join(pickled)}")
    actual = registry.file_digests(folder)
    for rel, digest in digests.items():
        if rel not in actual:
            raise LoadError(f"{what}: {rel} is missing")
        if actual[rel] != digest:
            raise LoadError(f"{what}: sha256 of {rel} is {actual[rel][:12]}…, registered {digest[:12]}…")
    unexpected = set(actual) - set(digests)
    if unexpected:
        raise LoadError(f"{what}: weight files not recorded at registration: {', '.join(sorted(unexpected))}")


def build_slot(
    name: str, version: str, base_model: str, adapter: Path | None, device: str = "auto", dtype: str = "auto"
) -> ModelSlot:
    """Load weights (safetensors only), merge the adapter, warm the model up, on the device and in the
    dtype of the shared policy (runtime/hardware.py; SmolLM2 on a CPU with native bf16 decoded 1.8x
    faster in bf16 than in float32 at 32 concurrent requests)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from runtime.hardware import HardwareError, choose

    try:
        choice = choose(dtype, device)
    except HardwareError as exc:
        raise LoadError(f"{name} v{version}: {exc}") from None
    log.info("%s v%s in %s on %s: %s", name, version, choice.dtype, choice.device, choice.reason)
    dev, dtype_ = choice.torch_device(), choice.torch_dtype()
    tok_source = adapter if adapter is not None and (adapter / "tokenizer.json").exists() else base_model
    t0 = time.monotonic()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tok_source))
        model: Any = AutoModelForCausalLM.from_pretrained(base_model, dtype=dtype_, use_safetensors=True)
        t1 = time.monotonic()
        if adapter is not None:
            model = merge_adapter(model, adapter)
    except (OSError, ValueError) as exc:
        raise LoadError(f"{name} v{version}: {exc}") from None
    model = model.to(dev).eval()
    t2 = time.monotonic()
    ctx = int(getattr(model.config, "max_position_embeddings", 2048) or 2048)
    slot = ModelSlot(name, version, model, tokenizer, context_length=min(ctx, 8192))
    warm(slot)
    log.info("%s v%s: base loaded in %.2fs, adapter merged in %.2fs, warmed in %.2fs", name, version, t1 - t0,
             t2 - t1, time.monotonic() - t2)  # fmt: skip
    return slot


def merge_adapter(model: Any, adapter: Path) -> Any:
    """``model`` with a plain LoRA adapter folded into its weights: W += (alpha / r) * B @ A, read
    from the adapter's safetensors. Seconds faster than building a peft model to merge it (which
    initialises every adapter layer first); other adapter kinds go through peft."""
    import json

    from safetensors.torch import load_file

    cfg = json.loads((adapter / "adapter_config.json").read_text())
    plain = (
        cfg.get("peft_type") == "LORA" and not cfg.get("use_dora") and not cfg.get("fan_in_fan_out")
        and cfg.get("bias", "none") == "none" and not cfg.get("rank_pattern") and not cfg.get("alpha_pattern")
        and not cfg.get("modules_to_save") and not cfg.get("lora_bias") and not cfg.get("trainable_token_indices")
    )  # fmt: skip
    if not plain:
        from peft import PeftModel

        return PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    r = int(cfg["r"])
    scale = float(cfg["lora_alpha"]) / (r**0.5 if cfg.get("use_rslora") else r)
    tensors = load_file(adapter / "adapter_model.safetensors")
    downs = {k: v for k, v in tensors.items() if k.endswith(".lora_A.weight")}
    if not downs or len(tensors) != 2 * len(downs):
        raise LoadError(f"{adapter}: not a LoRA adapter of A/B pairs ({len(tensors)} tensors)")
    with torch.no_grad():
        for key, a in downs.items():
            b = tensors[key.replace(".lora_A.", ".lora_B.")]
            path = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
            try:
                weight = model.get_submodule(path).weight
            except AttributeError:
                raise LoadError(f"{adapter}: the base model has no module {path}") from None
            weight += (b.float() @ a.float() * scale).to(weight.dtype)
    return model


def warm(slot: ModelSlot) -> None:
    """One short greedy generation, so the first real request does not pay for lazy initialisation."""
    from serving.worker.engine import Engine

    eng = Engine(max_batch=2)
    eng.swap(slot)
    eng.submit(messages=[{"role": "user", "content": "Hello"}], params=SamplingParams(max_tokens=2))
    while eng.queued() or eng.running():
        eng.step()


def load(settings: Settings, name: str, version: str = "champion", path: str = "") -> ModelSlot:
    """A warm slot for a registered version (number or alias) or, with ``path``, a local folder."""
    t0 = time.monotonic()
    check_name(name)
    if path:
        folder = Path(path)
        if not (folder / "config.json").exists():
            raise LoadError(f"{path}: not a Hugging Face model folder (no config.json)")
        slot = build_slot(name, version if version.isdigit() else "local", str(folder), None,
                          device=settings.device, dtype=settings.dtype)  # fmt: skip
    else:
        number = resolve_version(settings, name, version)
        if number is None:
            raise LoadError(f"{name} has no version with alias {version!r} in the registry")
        adapter, base = fetch_registered(settings, name, number)
        try:
            slot = build_slot(name, number, base, adapter, device=settings.device, dtype=settings.dtype)
        finally:  # the weights are in memory now (merged); the download is not needed any more
            downloads = settings.serving_dir
            shutil.rmtree(downloads / adapter.relative_to(downloads).parts[0], ignore_errors=True)
    slot.load_seconds = time.monotonic() - t0
    return slot
