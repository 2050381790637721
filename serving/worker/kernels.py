"""The serving engine's C loops: int8 (de)quantisation, RMSNorm and rotary embedding for the fused decode
step, and decode attention.

At 32 rows a linear layer's int8 matmul took ~60 us on a 2-core Xeon and the seven torch ops around it
(scale the input, take each row's maximum, divide, round, cast; then scale the product by rows and
columns) as long again: each op costs its dispatch whatever its size. The quantisation loops do the same
arithmetic in the same order (float32, IEEE division, round half to even), as do the norm and the
rotation, so their results are bit-identical to the torch ops (checked when the library loads; a test
keeps it so). Decode attention (one query token per row over its row's stored keys) writes the new keys
and values and attends in one call a layer, where torch needed an index_copy_ per storage and ~8 ops;
its sums run in another order and its exp is a polynomial within ~1 ulp, so it is checked close to SDPA,
not equal.

Where the CPU has AVX-512 VNNI, an int8 group's whole product is one call (``qlinear``): the quantisation
above writing unsigned bytes, the integer product on weights packed for VNNI's dot-product instruction
(``Packed``: 48 output columns a tile, 4 input channels a 64-byte vector, read in the order the loop
walks them), the float outlier channels as int16 (a scale per row and per column; VNNI's 16-bit dot product,
half the instructions and bytes of float32 ones), and the dequantisation on each tile while its sums are in
registers, then the bias. Its integers are ``torch._int_mm``'s and its result ``torch_qlinear``'s bits. On a
2-core AMD EPYC (weights hot in cache, ``bench/int8_kernels.py``) the int8 layers of a 32-row decode step
took 15.3 ms this way, 24.1 with the loops above around ``torch._int_mm`` (and float outlier channels),
28.0 with torch's ops alone.

The source, ``kernels.c``, is compiled here with the system C compiler (``cc -O3 -march=native -fopenmp``,
a fraction of a second) into the cache directory, keyed by source, CPU and compiler, and called through
``ctypes`` (which releases the GIL). No compiler, a failed build or a failed check: ``load()`` returns None and
the engine uses the torch ops. Calls with enough work split their rows among torch's own OpenMP threads
(the library links the libgomp torch loaded; where a second OpenMP runtime would be loaded instead, they
run on one thread rather than oversubscribe the cores). Quantisation on one thread was no slower than
torch's ops on two at any row count measured (up to 437 rows, a prefill of 32 prompts; 1.2-2.4x faster
below 100), so with at most 2 threads the loops take every call; with more, only calls of at most
``ROWS`` rows (decode steps).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import math
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

log = logging.getLogger(__name__)
ROWS = 64  # with more than 2 threads, at most this many rows take the C loops
SOURCE = (Path(__file__).parent / "kernels.c").read_text()  # compiled here: see load()
# no contraction of a * b + c into one rounding: the rotation must give the torch ops' bits
FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-ffp-contract=off", "-fopenmp", "-shared", "-fPIC"]


class Kernels:
    """The compiled library's functions on float32 CPU tensors."""

    def __init__(self, lib: Any, shared_threads: bool = True) -> None:
        p, i, n = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
        self._q, self._d = lib.lc_quantise, lib.lc_dequantise
        self._q.argtypes, self._q.restype = [p, p, i, i, p, p, n], None
        self._d.argtypes, self._d.restype = [p, p, p, i, i, p, n], None
        self._n, self._r = lib.lc_rmsnorm, lib.lc_rope
        self._n.argtypes, self._n.restype = [p, p, p, ctypes.c_float, i, i, p], None
        self._r.argtypes, self._r.restype = [p, i, p, p, i, i, i], None
        self._a = lib.lc_attend
        self._a.argtypes = [p, i, i, p, i, i, p, i, i, p, p, i, i, p, p, i, i, i, i, i, ctypes.c_float, i, p, p, n, n]
        self._a.restype = None
        self._l = lib.lc_qlinear
        self._l.argtypes = [p, p, i, i, i, p, p, p, p, p, i, i, p, i, i, ctypes.c_float, p, p, p, p, p, p, n]
        self._l.restype = None
        lib.lc_vnni.restype = lib.lc_half.restype = n
        self.vnni = bool(lib.lc_vnni())  # built with AVX-512 VNNI: int8 groups take qlinear on packed weights
        self.half = bool(lib.lc_half())  # the compiler has a float16 type: attend takes float16 storage
        # the loops' OpenMP teams are torch's own threads only where torch's libgomp is the one loaded
        self.shared_threads = shared_threads

    def threads(self) -> int:
        return torch.get_num_threads() if self.shared_threads else 1

    def __deepcopy__(self, memo: dict[int, Any]) -> Kernels:  # stateless: a copied model shares the library
        return self

    def quantise(self, x: torch.Tensor, inv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` [m, k] contiguous -> (int8 [m, k], scale [m, 1]): rows of ``x * inv`` over their maximum / 127."""
        m, k = x.shape
        q = torch.empty(m, k, dtype=torch.int8)
        scale = torch.empty(m, 1)
        self._q(x.data_ptr(), inv.data_ptr(), m, k, q.data_ptr(), scale.data_ptr(), self.threads())
        return q, scale

    def dequantise(self, y: torch.Tensor, scale: torch.Tensor, w_scale: torch.Tensor) -> torch.Tensor:
        """``y`` int32 [m, n] -> ``y * scale * w_scale`` in float32."""
        m, n = y.shape
        out = torch.empty(m, n)
        self._d(y.data_ptr(), scale.data_ptr(), w_scale.data_ptr(), m, n, out.data_ptr(), self.threads())
        return out

    def qlinear(self, x: torch.Tensor, inv: torch.Tensor, packed: Packed, w_scale: torch.Tensor,
                outliers: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor:  # fmt: skip
        """An int8 group's product in one call: ``x`` [m, k] float32 contiguous, quantised as ``quantise``, times
        the ``packed`` weights (the integers exactly ``torch._int_mm``'s), dequantised as ``dequantise``, plus
        the ``outliers`` columns of ``x`` (int16, a scale per row) times the packed outlier weights, and ``bias``.
        -> [m, n] float32, ``torch_qlinear``'s bits."""
        m, k = x.shape
        assert k == packed.k and x.is_contiguous() and x.dtype == inv.dtype == torch.float32
        q = torch.empty(m, packed.ldq, dtype=torch.uint8)
        scale, xs = torch.empty(m), torch.empty(m)
        xo = torch.empty(m, packed.op, dtype=torch.int16)
        y = torch.empty(m, packed.n)
        o = packed.o if outliers is not None and packed.wo is not None else 0
        wo, wo_scale = (packed.wo, packed.wo_scale) if o else (None, None)
        self._l(x.data_ptr(), inv.data_ptr(), m, k, packed.ldq, q.data_ptr(), scale.data_ptr(),
                packed.weights.data_ptr(), packed.comp.data_ptr(), w_scale.data_ptr(), packed.n, packed.np,
                outliers.data_ptr() if o else None, o, packed.op if o else 0, packed.lim,  # type: ignore[union-attr]
                wo.data_ptr() if o else None, wo_scale.data_ptr() if o else None,  # type: ignore[union-attr]
                xo.data_ptr(), xs.data_ptr(), None if bias is None else bias.data_ptr(), y.data_ptr(),
                self.threads())  # fmt: skip
        return y

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, keys: torch.Tensor,
               values: torch.Tensor, pos: torch.Tensor, window: int | None, scaling: float, work: torch.Tensor,
               rows: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """Attention of m query tokens over their rows' stored keys. Token i's new ``key``/``value``
        [m, kv_heads, 1, dim] is written at column ``pos[i]`` of storage row ``rows[i]`` (row i without
        ``rows``: a decode step's one token per row) of ``keys``/``values`` [rows, kv_heads, columns, dim]
        (each head's columns contiguous); then ``query`` [m, heads, 1, dim] attends to its row's columns
        ``pos - window + 1 .. pos``: softmax(q k^T * scaling) v, query heads grouped on KV heads. All float32
        (the storage float32 or float16: the new keys and values rounded to it as written), last axes
        contiguous; ``work`` [threads, width] holds each thread's scores. -> [m, heads * dim]. Sums in another
        order than torch's and an exp within ~1 ulp of torch's: close, not its bits."""
        m, heads, _, dim = query.shape
        kv_heads, width = keys.shape[1], work.shape[1]
        assert query.stride(3) == key.stride(3) == value.stride(3) == keys.stride(3) == 1 and keys.stride(2) == dim
        assert keys.stride() == values.stride() and dim <= 256 and keys.dtype == values.dtype
        assert keys.dtype == torch.float32 or (keys.dtype == torch.float16 and self.half)
        threads = self.threads()
        assert work.shape[0] >= threads and work.is_contiguous() and pos.dtype == torch.int64 and pos.is_contiguous()
        assert rows is None or (rows.dtype == torch.int64 and rows.is_contiguous() and rows.shape[0] == m)
        out = torch.empty(m, heads * dim)
        self._a(query.data_ptr(), query.stride(0), query.stride(1), key.data_ptr(), key.stride(0), key.stride(1),
                value.data_ptr(), value.stride(0), value.stride(1), keys.data_ptr(), values.data_ptr(),
                keys.stride(0), keys.stride(1), pos.data_ptr(), None if rows is None else rows.data_ptr(),
                window or 0, m, heads, kv_heads, dim, scaling, width, work.data_ptr(), out.data_ptr(),
                threads, int(keys.dtype == torch.float16))  # fmt: skip
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


class Packed:
    """An int8 weight [n, k] laid out for ``Kernels.qlinear``: tiles of ``TILE`` output columns (n padded
    with zero columns), and in each, for every 4 input channels (k padded with zeros to ``ldq``), the tile's
    16-column vectors of 4 bytes per column in turn; ``comp`` holds 128 x each column's sum (the activations
    go in offset by 128). The float weights of the outlier channels ``w_outliers`` [o, n] become int16 with a
    scale per column (``wo_scale``), within +-``lim`` so that o products of two such numbers add up in int32
    (32 channels: 8191, ~1e-4 of each column's largest), as pairs of channels: [op / 2, np, 2]."""

    TILE = 48  # QC x 16 in kernels.c

    def __init__(self, w: torch.Tensor, w_outliers: torch.Tensor | None = None) -> None:
        n, k = w.shape
        self.n, self.k, self.ldq, self.np = n, k, -(-k // 4) * 4, -(-n // 16) * 16
        tiles = -(-n // self.TILE)
        padded = torch.zeros(tiles * self.TILE, self.ldq, dtype=torch.int8)
        padded[:n, :k] = w
        blocks = padded.view(tiles, self.TILE // 16, 16, self.ldq // 4, 4).permute(0, 3, 1, 2, 4)
        self.weights = blocks.contiguous()
        self.comp = (w.sum(1, dtype=torch.int32) * 128).contiguous()
        self.o = 0 if w_outliers is None else w_outliers.shape[0]
        self.op = self.o + self.o % 2
        self.lim = float(min(32767, math.isqrt((2**31 - 1) // max(self.op, 1))))
        self.wo: torch.Tensor | None = None
        self.wo_scale: torch.Tensor | None = None
        if w_outliers is not None and self.o:
            wo = w_outliers.float()
            self.wo_scale = wo.abs().amax(0) / self.lim
            q = torch.where(self.wo_scale > 0, wo / self.wo_scale, 0.0).round().to(torch.int16)
            pairs = torch.zeros(self.op, self.np, dtype=torch.int16)
            pairs[: self.o, :n] = q
            self.wo = pairs.view(self.op // 2, 2, self.np).transpose(1, 2).contiguous()

    def unpack(self) -> torch.Tensor:
        """The weight [n, k] back."""
        tiles = self.weights.shape[0]
        full = self.weights.permute(0, 2, 3, 1, 4).reshape(tiles * self.TILE, self.ldq)
        return full[: self.n, : self.k].contiguous()


def torch_qlinear(x: torch.Tensor, inv: torch.Tensor, w: torch.Tensor, packed: Packed, w_scale: torch.Tensor,
                  outliers: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor:  # fmt: skip
    """What ``Kernels.qlinear`` computes, as torch ops, with its bits (``w``: the int8 weight [n, k])."""
    q, scale = torch_quantise(x, inv)
    y = (q.double() @ w.double().t()).to(torch.int32) * scale * w_scale  # the integer sums exact in float64
    if outliers is not None and packed.wo is not None and packed.wo_scale is not None:
        xo = x[:, outliers]
        xs = xo.abs().amax(1, keepdim=True) / packed.lim
        xq = torch.where(xs > 0, xo / xs, 0.0).round()
        wq = packed.wo.transpose(1, 2).reshape(packed.op, packed.np)[: packed.o, : packed.n]
        y = y + (xq.double() @ wq.double()).to(torch.int32) * xs * packed.wo_scale
    return y if bias is None else y + bias


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


def torch_attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, keys: torch.Tensor,
                 values: torch.Tensor, pos: torch.Tensor, window: int | None, scaling: float,
                 width: int) -> torch.Tensor:  # fmt: skip
    """What ``Kernels.attend`` computes, as torch ops (SDPA with each row's mask, GQA by repeated heads)."""
    m, heads, _, dim = query.shape
    rows = torch.arange(m)
    keys[rows, :, pos], values[rows, :, pos] = key[:, :, 0], value[:, :, 0]
    col = torch.arange(width)
    mask = (col[None] <= pos[:, None]) & ((col[None] > pos[:, None] - window) if window else True)
    rep = heads // keys.shape[1]
    k, v = (t[:, :, :width].repeat_interleave(rep, 1) for t in (keys, values))
    out = F.scaled_dot_product_attention(query, k, v, attn_mask=mask[:, None, None], scale=scaling)
    return out.reshape(m, heads * dim)


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
    # attention: 3 rows (one sees only its first column, one a window), 6 query heads on 2 KV heads; 64-wide
    # heads in a float16 store take a loop of their own
    pos = torch.tensor([0, 6, 8])
    attend = True
    for window, half, dim in ((None, False, 16), (4, False, 16), (4, True, 16), (None, True, 64))[: 4 if k.half else 2]:
        query = torch.randn(3, 6, 1, dim, generator=gen)
        keys, values = torch.randn(2, 3, 2, 9, dim, generator=gen) * 3
        new = torch.randn(2, 3, 2, 1, dim, generator=gen)
        dtype = torch.float16 if half else torch.float32
        stored = [t.to(dtype) for t in (keys, values)]  # a float16 store: torch's ops on what it holds
        got = k.attend(query, new[0], new[1], stored[0], stored[1], pos, window, 0.25, torch.empty(k.threads(), 9))
        seen = [t.to(dtype).float() for t in (keys, values, new[0], new[1])]
        ref = torch_attend(query, seen[2], seen[3], seen[0], seen[1], pos, window, 0.25, 9)
        attend &= torch.allclose(got, ref, rtol=1e-5, atol=1e-6) and torch.equal(stored[0].float(), seen[0])
    return (torch.equal(q, q_ref) and torch.equal(s, s_ref) and torch.equal(k.dequantise(y, s, w), (y * s).mul_(w))
            and rope and attend and (not k.vnni or _qlinear_agrees(k, gen)))  # fmt: skip


def _qlinear_agrees(k: Kernels, gen: torch.Generator) -> bool:
    """``qlinear`` gives ``torch_qlinear``'s bits at sizes that leave partial tiles, rows, 4-channel groups and
    channel pairs, with and without outlier channels and bias."""
    ok = True
    for m, n, o in ((11, 101, 3), (3, 37, 0)):
        x = torch.randn(m, 83, generator=gen) * 10
        inv = torch.rand(83, generator=gen)
        w = torch.randint(-127, 128, (n, 83), dtype=torch.int8, generator=gen)
        ws, bias = torch.rand(n, generator=gen), torch.randn(n, generator=gen) if o else None
        idx, wo = torch.randperm(83, generator=gen)[:o].sort().values, torch.randn(o, n, generator=gen)
        packed = Packed(w, wo if o else None)
        got = k.qlinear(x, inv, packed, ws, idx if o else None, bias)
        ref = torch_qlinear(x, inv, w, packed, ws, idx if o else None, bias)
        ok &= torch.equal(packed.unpack(), w) and torch.equal(got, ref)
    return ok


def shared_openmp() -> bool:
    """Whether one OpenMP runtime is loaded (torch's): then the loops' threads are torch's own. Two
    (a torch wheel that bundles its libgomp under another name) would oversubscribe the cores."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return False
    return len({os.path.realpath(line.split()[-1]) for line in maps.splitlines() if "libgomp" in line}) <= 1


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
        kernels = Kernels(ctypes.CDLL(str(path)), shared_openmp())
        if not _agrees(kernels):
            log.warning("the int8 C kernels (%s) disagree with torch's ops: torch's ops used", path)
            kernels = None
    except (OSError, subprocess.SubprocessError) as exc:
        err = (getattr(exc, "stderr", b"") or b"").decode(errors="replace")[-300:]
        log.warning("int8 C kernels unavailable (%s%s): torch's ops used", exc, f": {err}" if err else "")
    _loaded[str(path)] = kernels
    return kernels
