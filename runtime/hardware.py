"""One device and dtype policy for the trainer, evaluation, the MLflow model and the workers.

``choose("auto")`` picks what is supported *and* fast on this machine, never a capability flag alone:

- CUDA: bfloat16 where the card supports it natively (``torch.cuda.is_bf16_supported(False)``:
  Ampere and later), else float16; ``float32`` only when asked for.
- CPU: bfloat16 only when the CPU has native bf16 instructions (x86 ``avx512_bf16`` or ``amx_bf16``,
  Arm ``bf16``) **and** a short timed probe (a training-shaped matmul, bf16 vs float32) confirms it
  is faster. oneDNN emulates bf16 on other CPUs and reports it "supported": an Intel Xeon with
  AVX-512 but no AVX512-BF16 ran a 2048x576x1536 matmul at 37.5 GFLOP/s in bf16 vs 182 in float32.
  The probe's result is cached per machine (CPU model, flags, torch version) under the cache dir.

Every choice carries the reason it was made, which the callers log.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DTYPES = ("auto", "float32", "bfloat16", "float16")
#: bf16 must beat float32 by this factor in the probe to be chosen (noise on a shared machine).
PROBE_MIN_SPEEDUP = 1.2
_NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


class HardwareError(ValueError):
    """A requested device or dtype this machine cannot use; the message names it."""


@dataclass(frozen=True)
class Choice:
    device: str  # "cpu", "cuda", "cuda:1"
    dtype: str  # one of DTYPES but "auto"
    reason: str

    def torch_dtype(self) -> Any:
        import torch

        return getattr(torch, self.dtype)

    def torch_device(self) -> Any:
        import torch

        return torch.device(self.device)


def cpu_info() -> tuple[str, set[str]]:
    """(CPU model name, its feature flags) from /proc/cpuinfo; ('', set()) where there is none."""
    model, flags = platform.processor() or platform.machine(), set[str]()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return model, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model") and value.strip():
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return model, flags


def native_bf16(flags: set[str]) -> str:
    """The flag that says the CPU computes bf16 natively, '' when none does."""
    for flag in _NATIVE_BF16_FLAGS:
        if flag in flags:
            return flag
    if platform.machine() in ("aarch64", "arm64") and "bf16" in flags:
        return "bf16"
    return ""


def _probe() -> dict[str, float]:
    """GFLOP/s of a 512x576x1536 matmul (a SmolLM2 projection on a micro-batch) in float32 and bf16."""
    import torch

    result = {}
    for name in ("float32", "bfloat16"):
        dt = getattr(torch, name)
        result[name] = _rate(torch.matmul, torch.randn(512, 576, dtype=dt), torch.randn(576, 1536, dtype=dt))
    return result


def _rate(op: Any, a: Any, b: Any) -> float:
    """G(FL)OP/s of ``op(a, b)`` for an [m, k] x [k, n] product: 0.1 s of warm-up (the first calls pay
    for oneDNN/MKL set-up), then 0.15 s counted."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < 0.1:
        op(a, b)
    reps, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < 0.15:
        op(a, b)
        reps += 1
    return round(2 * a.shape[0] * a.shape[1] * b.shape[1] * reps / elapsed / 1e9, 1)


def cpu_bf16_probe(cache_dir: Path | None = None) -> dict[str, float]:
    """The probe's figures for this machine, measured once and cached (keyed by CPU, flags, torch)."""
    return cached("bf16", _probe, {"float32", "bfloat16"}, cache_dir)


def _default_cache() -> Path:
    return Path(os.environ.get("LIFECYCLE_CACHE_DIR") or Path.home() / ".cache" / "llm-lifecycle")


def choose(
    dtype: str = "auto", device: str = "auto", *, training: bool = False, cache_dir: Path | None = None
) -> Choice:
    """The device and dtype to run on, with the reason. ``dtype``/``device`` may force either.
    ``training``: float16 is not offered (it needs loss scaling, which the trainer does not do)."""
    import torch

    if dtype not in DTYPES:
        raise HardwareError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise HardwareError(f"device {device!r} asked for, but torch sees no CUDA device")
    if device != "cpu" and not device.startswith("cuda"):
        raise HardwareError(f"device must be auto, cpu or cuda[:N], got {device!r}")
    if training and dtype == "float16":
        raise HardwareError("dtype float16 is not supported for training (no loss scaling); use bfloat16 or float32")
    if dtype != "auto":
        return Choice(device, dtype, f"{dtype} as configured")
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(torch.device(device))
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return Choice(device, "bfloat16", f"{name} computes bf16 natively")
        if training:
            return Choice(device, "float32", f"{name} has no native bf16; float32 for training")
        return Choice(device, "float16", f"{name} has no native bf16; float16")
    model, flags = cpu_info()
    flag = native_bf16(flags)
    if not flag:
        return Choice("cpu", "float32", f"{model or 'this CPU'} has no native bf16 (no {'/'.join(_NATIVE_BF16_FLAGS)})")
    fig = cpu_bf16_probe(cache_dir)
    speedup = fig["bfloat16"] / max(fig["float32"], 1e-9)
    measured = f"matmul bf16 {fig['bfloat16']:.0f} vs float32 {fig['float32']:.0f} GFLOP/s"
    if speedup >= PROBE_MIN_SPEEDUP:
        return Choice("cpu", "bfloat16", f"{model}: {flag}, {measured}")
    return Choice("cpu", "float32", f"{model}: {flag} but {measured} (< {PROBE_MIN_SPEEDUP}x)")


#: int8 matmuls must beat the float dtype by this factor in the probe for ``auto`` to serve int8 weights.
INT8_MIN_SPEEDUP = 1.5


def _int8_probe() -> dict[str, float]:
    """G(FL)OP/s of a 32x576x1536 matmul (a decode batch of 32 through a SmolLM2 projection) in int8
    (``torch._int_mm``), float32 and bf16."""
    import torch

    # the int8 weight as served: stored [out, in], passed transposed
    result = {
        "int8": _rate(torch._int_mm, torch.ones(32, 576, dtype=torch.int8), torch.ones(1536, 576, dtype=torch.int8).t())
    }
    for name in ("float32", "bfloat16"):
        dt = getattr(torch, name)
        result[name] = _rate(torch.matmul, torch.randn(32, 576, dtype=dt), torch.randn(576, 1536, dtype=dt))
    return result


def cached(name: str, probe: Any, keys: set[str], cache_dir: Path | None, what: str = "") -> dict[str, float]:
    """``probe()``'s figures, measured once per machine (CPU model, flags, torch) and ``what`` (e.g. a
    model's digest) and kept under the cache dir."""
    import torch

    model, flags = cpu_info()
    key = hashlib.sha256(
        (f"{model}|{sorted(flags)}|{torch.__version__}" + (f"|{what}" if what else "")).encode()
    ).hexdigest()[:16]
    path = (cache_dir or _default_cache()) / "hardware" / f"{name}-probe-{key}.json"
    try:
        cached = json.loads(path.read_text())
        if isinstance(cached, dict) and keys <= cached.keys():
            return {k: float(v) for k, v in cached.items()}
    except (OSError, ValueError):
        pass
    figures: dict[str, float] = probe()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(figures))
        tmp.replace(path)
    except OSError as exc:  # a read-only home still gets a decision, measured each time
        log.warning("could not cache the %s probe at %s: %s", name, path, exc)
    return figures


def serve_int8(weights: str, choice: Choice, cache_dir: Path | None = None) -> tuple[bool, str]:
    """Whether a worker's base on ``choice`` gets int8 weights (LIFECYCLE_SERVE_WEIGHTS), and why.
    The model's own quality check (serving/worker/int8.py) comes after, under ``auto``."""
    if weights not in ("auto", "float", "int8"):
        raise HardwareError(f"serve_weights must be auto, float or int8, got {weights!r}")
    if weights == "float":
        return False, "float weights as configured"
    if choice.device != "cpu":
        if weights == "int8":
            raise HardwareError(f"int8 weights are served on CPU only; {choice.device} serves {choice.dtype}")
        return False, f"{choice.device}: float weights ({choice.dtype})"
    if weights == "int8":
        return True, "int8 weights as configured"
    fig = cached("int8", _int8_probe, {"int8", "float32", "bfloat16"}, cache_dir)
    against = choice.dtype if choice.dtype in fig else "float32"  # float16 on a CPU: measured as float32
    speedup = fig["int8"] / max(fig[against], 1e-9)
    measured = f"matmul int8 {fig['int8']:.0f} GOP/s vs {against} {fig[against]:.0f} GFLOP/s"
    if speedup >= INT8_MIN_SPEEDUP:
        return True, measured
    return False, f"{measured} (< {INT8_MIN_SPEEDUP}x): float weights"


def describe(choice: Choice) -> dict[str, str]:
    return asdict(choice)
