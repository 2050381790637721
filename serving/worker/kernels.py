"""Per-token int8 quantisation and dequantisation of a decode step's few rows, in C.

At 32 rows a linear layer's int8 matmul took ~60 us on a 2-core Xeon and the seven torch ops around it
(scale the input, take each row's maximum, divide, round, cast; then scale the product by rows and
columns) as long again: each op costs its dispatch whatever its size. These two loops do the same
arithmetic in the same order (float32, IEEE division, round half to even), so their results are
bit-identical to the torch ops (checked when the library loads; a test keeps it so).

The source is compiled here with the system C compiler (``cc -O3 -march=native``, a fraction of a
second) into the cache directory, keyed by source, CPU and compiler, and called through ``ctypes``
(which releases the GIL). No compiler, a failed build or a failed check: ``load()`` returns None and
the int8 layers use the torch ops. These loops run on one thread, torch's ops on all of them: with
at most 2 threads the loops were no slower at any row count measured (up to 437 rows, a prefill of 32
prompts; 1.2-2.4x faster below 100), so they take every call there; with more threads, only calls of
at most ``ROWS`` rows (decode steps).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)
ROWS = 64  # with more than 2 threads, at most this many rows take the C loops
SOURCE = r"""
#include <stdint.h>
#include <math.h>
#define L 16
void lc_quantise(const float* x, const float* inv, int64_t m, int64_t k, int8_t* q, float* scale) {
  for (int64_t i = 0; i < m; i++) {
    const float* row = x + i * k;
    int8_t* out = q + i * k;
    float acc[L] = {0};
    int64_t j = 0;
    for (; j + L <= k; j += L)
      for (int l = 0; l < L; l++) { float v = fabsf(row[j + l] * inv[j + l]); acc[l] = acc[l] > v ? acc[l] : v; }
    float amax = 0.f;
    for (; j < k; j++) { float v = fabsf(row[j] * inv[j]); amax = amax > v ? amax : v; }
    for (int l = 0; l < L; l++) amax = amax > acc[l] ? amax : acc[l];
    float s = (amax > 1e-8f ? amax : 1e-8f) / 127.0f;
    scale[i] = s;
    for (j = 0; j < k; j++) out[j] = (int8_t)nearbyintf(row[j] * inv[j] / s);
  }
}
void lc_dequantise(const int32_t* y, const float* scale, const float* w_scale, int64_t m, int64_t n, float* out) {
  for (int64_t i = 0; i < m; i++) {
    const float s = scale[i];
    const int32_t* row = y + i * n;
    float* o = out + i * n;
    for (int64_t j = 0; j < n; j++) o[j] = (float)row[j] * s * w_scale[j];
  }
}
void lc_rmsnorm(const float* x, const float* var, const float* w, float eps, int64_t m, int64_t k, float* out) {
  for (int64_t i = 0; i < m; i++) {
    const float r = 1.0f / sqrtf(var[i] + eps);
    for (int64_t j = 0; j < k; j++) out[i * k + j] = w[j] * (x[i * k + j] * r);
  }
}
void lc_rope(float* t, int64_t stride, const float* cos, const float* sin, int64_t m, int64_t heads, int64_t dim) {
  const int64_t h = dim / 2;
  float tmp[1024];
  for (int64_t i = 0; i < m; i++) {
    const float* c = cos + i * dim;
    const float* s = sin + i * dim;
    for (int64_t a = 0; a < heads; a++) {
      float* p = t + i * stride + a * dim;
      for (int64_t j = 0; j < dim; j++) tmp[j] = p[j];
      for (int64_t j = 0; j < h; j++) p[j] = tmp[j] * c[j] + (-tmp[j + h]) * s[j];
      for (int64_t j = h; j < dim; j++) p[j] = tmp[j] * c[j] + tmp[j - h] * s[j];
    }
  }
}
"""
# no contraction of a * b + c into one rounding: the rotation must give the torch ops' bits
FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-ffp-contract=off", "-shared", "-fPIC"]


class Kernels:
    """The compiled library's two functions on float32 CPU tensors."""

    def __init__(self, lib: Any) -> None:
        p, i = ctypes.c_void_p, ctypes.c_int64
        self._q, self._d = lib.lc_quantise, lib.lc_dequantise
        self._q.argtypes, self._q.restype = [p, p, i, i, p, p], None
        self._d.argtypes, self._d.restype = [p, p, p, i, i, p], None
        self._n, self._r = lib.lc_rmsnorm, lib.lc_rope
        self._n.argtypes, self._n.restype = [p, p, p, ctypes.c_float, i, i, p], None
        self._r.argtypes, self._r.restype = [p, i, p, p, i, i, i], None

    def __deepcopy__(self, memo: dict[int, Any]) -> Kernels:  # stateless: a copied model shares the library
        return self

    def quantise(self, x: torch.Tensor, inv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` [m, k] contiguous -> (int8 [m, k], scale [m, 1]): rows of ``x * inv`` over their maximum / 127."""
        m, k = x.shape
        q = torch.empty(m, k, dtype=torch.int8)
        scale = torch.empty(m, 1)
        self._q(x.data_ptr(), inv.data_ptr(), m, k, q.data_ptr(), scale.data_ptr())
        return q, scale

    def dequantise(self, y: torch.Tensor, scale: torch.Tensor, w_scale: torch.Tensor) -> torch.Tensor:
        """``y`` int32 [m, n] -> ``y * scale * w_scale`` in float32."""
        m, n = y.shape
        out = torch.empty(m, n)
        self._d(y.data_ptr(), scale.data_ptr(), w_scale.data_ptr(), m, n, out.data_ptr())
        return out

    def rmsnorm(self, x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
        """Llama's RMSNorm of ``x`` [m, k] contiguous float32, ``w * (x * rsqrt(mean(x^2) + eps))``, with its
        bits: the mean by torch's own reduction (its order of summing), the rest in one loop."""
        m, k = x.shape
        var = x.pow(2).mean(-1)
        out = torch.empty(m, k)
        self._n(x.data_ptr(), var.data_ptr(), w.data_ptr(), eps, m, k, out.data_ptr())
        return out

    def rope_(self, t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, dim: int) -> torch.Tensor:
        """Rotary position embedding in place on ``t`` [m, heads * dim] (rows may be strided, each row's
        values contiguous) with ``cos``/``sin`` [m, dim]: ``t * cos + rotate_half(t) * sin`` in
        Hugging Face's order, so its bits."""
        m, n = t.shape
        assert t.stride(1) == 1 and cos.is_contiguous() and sin.is_contiguous() and dim <= 1024
        self._r(t.data_ptr(), t.stride(0), cos.data_ptr(), sin.data_ptr(), m, n // dim, dim)
        return t


def torch_quantise(x: torch.Tensor, inv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What ``Kernels.quantise`` does, as torch ops (any dtype, any rows)."""
    flat = x * inv
    scale = flat.abs().amax(1, keepdim=True).float().clamp_(min=1e-8).div_(127)  # 8x linalg's inf-norm here
    # a division, as the C loop: x * (127 / amax) rounds worse (+0.8 % NLL on SmolLM2)
    return torch.div(flat, scale).round_().to(torch.int8), scale


def torch_rope(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, dim: int) -> torch.Tensor:
    """What ``Kernels.rope_`` does, as Hugging Face's ``apply_rotary_pos_emb`` computes it (a new tensor)."""
    x = t.reshape(t.shape[0], -1, dim)
    half = torch.cat((-x[..., dim // 2 :], x[..., : dim // 2]), dim=-1)
    return (x * cos[:, None] + half * sin[:, None]).reshape(t.shape)


def _agrees(k: Kernels) -> bool:
    """The C loops give the torch ops' bits on a sample with zeroed channels, tiny and large rows."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 83, generator=gen) * torch.logspace(-9, 3, 83)
    x[2] = 0
    inv = torch.rand(83, generator=gen)
    inv[::7] = 0
    q, s = k.quantise(x, inv)
    q_ref, s_ref = torch_quantise(x, inv)
    y = torch.randint(-(2**24), 2**24, (5, 37), dtype=torch.int32, generator=gen)
    w = torch.rand(37, generator=gen)
    t = torch.randn(5, 3 * 8, generator=gen)
    cos, sin = torch.randn(5, 8, generator=gen), torch.randn(5, 8, generator=gen)
    rope = torch.equal(k.rope_(t.clone(), cos, sin, 8), torch_rope(t, cos, sin, 8))
    return (torch.equal(q, q_ref) and torch.equal(s, s_ref) and torch.equal(k.dequantise(y, s, w), (y * s).mul_(w))
            and rope)  # fmt: skip


_loaded: dict[str, Kernels | None] = {}


@functools.cache
def _key(cc: str) -> str:
    from runtime.hardware import cpu_info

    model, flags = cpu_info()
    return hashlib.sha256(f"{SOURCE}|{FLAGS}|{cc}|{model}|{sorted(flags)}".encode()).hexdigest()[:16]


def load(cache_dir: Path | None = None) -> Kernels | None:
    """The kernels, compiled on first use on this machine; None where they cannot be (see the module)."""
    from runtime.hardware import _default_cache

    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        return None
    path = (cache_dir or _default_cache()) / "kernels" / f"int8-{_key(cc)}.so"
    if str(path) in _loaded:
        return _loaded[str(path)]
    kernels = None
    try:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            src = path.with_suffix(f".{os.getpid()}.c")
            src.write_text(SOURCE)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            subprocess.run([cc, *FLAGS, "-o", str(tmp), str(src)], check=True, capture_output=True, timeout=120)
            src.unlink()
            tmp.replace(path)
        kernels = Kernels(ctypes.CDLL(str(path)))
        if not _agrees(kernels):
            log.warning("the int8 C kernels (%s) disagree with torch's ops: torch's ops used", path)
            kernels = None
    except (OSError, subprocess.SubprocessError) as exc:
        err = (getattr(exc, "stderr", b"") or b"").decode(errors="replace")[-300:]
        log.warning("int8 C kernels unavailable (%s%s): torch's ops used", exc, f": {err}" if err else "")
    _loaded[str(path)] = kernels
    return kernels
