"""The C kernels: compiled here, bit-identical to the torch ops they replace where they promise it
(quantisation, dequantisation, norm, rotation; alone and inside a quantised model), close where they sum
in another order (decode attention, the VNNI loop's float outlier channels; its integers are exact); the torch
ops used, with a warning, where no kernel can be built."""

from __future__ import annotations

import copy
import logging
import shutil
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from serving.worker import int8, kernels
from serving.worker.loader import build_base


def test_the_kernels_build_and_give_the_torch_ops_bits(tmp_path: Path) -> None:
    assert shutil.which("cc") or shutil.which("gcc")  # the CI machine has a compiler: the kernels must build
    k = kernels.load(tmp_path)
    assert k is not None and list((tmp_path / "kernels").glob("int8-*.so"))
    gen = torch.Generator().manual_seed(1)
    for rows, cols in ((1, 576), (32, 1536), (7, 83)):
        x = torch.randn(rows, cols, generator=gen) * torch.rand(cols, generator=gen) * 30
        x[0, :5] = 0
        inv = torch.rand(cols, generator=gen)
        inv[::9] = 0  # the float outlier channels: zero in the int8 product
        q, scale = k.quantise(x, inv)
        q_ref, scale_ref = kernels.torch_quantise(x, inv)
        assert q.dtype == torch.int8 and torch.equal(q, q_ref) and torch.equal(scale, scale_ref)
        assert q.abs().max() == 127
        y = torch.randint(-(2**22), 2**22, (rows, 300), dtype=torch.int32, generator=gen)
        w = torch.rand(300, generator=gen)
        assert torch.equal(k.dequantise(y, scale, w), (y * scale).mul_(w))
    y = torch.randint(-(2**22), 2**22, (32, 3000), dtype=torch.int32, generator=gen)  # split among the threads
    scale, w = torch.rand(32, 1, generator=gen), torch.rand(3000, generator=gen)
    assert torch.get_num_threads() == 1 or k.threads() > 1
    assert torch.equal(k.dequantise(y, scale, w), (y * scale).mul_(w))


@pytest.mark.parametrize("half", [False, True])  # a float16 store: its values read widened, new ones rounded
@pytest.mark.parametrize(("rows", "heads", "kv_heads", "dim", "window"),
                         [(32, 9, 3, 64, None), (3, 4, 4, 128, None), (5, 6, 2, 48, 7), (1, 8, 1, 64, 3)])  # fmt: skip
def test_decode_attention_writes_the_new_keys_and_attends_as_sdpa(
    tmp_path: Path, rows: int, heads: int, kv_heads: int, dim: int, window: int | None, half: bool
) -> None:
    k = kernels.load(tmp_path)
    assert k is not None
    gen = torch.Generator().manual_seed(rows)
    columns, width = 40, 33
    dtype = torch.float16 if half else torch.float32
    keys, values = torch.randn(2, rows, kv_heads, columns, dim, generator=gen).to(dtype)
    proj = torch.randn(rows, (heads + 2 * kv_heads) * dim, generator=gen)  # q, k, v side by side, as a group
    q, key, value = proj.split([heads * dim, kv_heads * dim, kv_heads * dim], -1)
    q, key, value = q.view(rows, heads, 1, dim), key.view(rows, kv_heads, 1, dim), value.view(rows, kv_heads, 1, dim)
    pos = torch.randint(0, width, (rows,), generator=gen)
    pos[0], pos[-1] = width - 1, 0  # the longest row, and a row that sees only its own token
    k_ref, v_ref = keys.float(), values.float()  # what the store holds, as float32 (a copy either way)
    seen_key, seen_value = key.to(dtype).float(), value.to(dtype).float()  # the new ones as the store keeps them
    out = k.attend(q, key, value, keys, values, pos, window, dim**-0.5, torch.empty(k.threads(), width))
    ref = kernels.torch_attend(q, seen_key, seen_value, k_ref, v_ref, pos, window, dim**-0.5, width)
    assert torch.equal(keys.float(), k_ref) and torch.equal(values.float(), v_ref)  # the new keys and values, at pos
    assert torch.equal(keys[torch.arange(rows), :, pos].float(), seen_key[:, :, 0])
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    own = out.view(rows, heads, dim)[-1]  # the row at position 0 returns its own value
    torch.testing.assert_close(own, seen_value[-1, :, 0].repeat_interleave(heads // kv_heads, 0), rtol=0, atol=0)


@pytest.mark.parametrize("half", [False, True])
def test_prefill_attention_writes_each_prompts_tokens_into_its_row_and_attends_causally(
    tmp_path: Path, half: bool
) -> None:
    k = kernels.load(tmp_path)
    assert k is not None
    gen = torch.Generator().manual_seed(7)
    heads, kv_heads, dim, columns = 6, 2, 64, 24
    dtype = torch.float16 if half else torch.float32
    keys, values = torch.randn(2, 4, kv_heads, columns, dim, generator=gen).to(dtype)
    # packed prompts: row 3 with 5 new tokens after a 4-token cached prefix, row 1 with 7 tokens from column 0
    rows = torch.tensor([3] * 5 + [1] * 7)
    cols = torch.cat([torch.arange(4, 9), torch.arange(0, 7)])
    q = torch.randn(1, heads, 12, dim, generator=gen)  # as the model hands them over: [1, heads, tokens, dim]
    key, value = torch.randn(2, 1, kv_heads, 12, dim, generator=gen)
    before = keys.clone(), values.clone()
    view = (t[0].transpose(0, 1)[:, :, None] for t in (q, key, value))
    out = k.attend(*view, keys, values, cols, None, 0.125, torch.empty(k.threads(), 9), rows=rows)
    assert torch.equal(keys[rows, :, cols], key[0].transpose(0, 1).to(dtype))
    assert torch.equal(values[rows, :, cols], value[0].transpose(0, 1).to(dtype))
    untouched = torch.ones(4, columns, dtype=torch.bool)
    untouched[rows, cols] = False
    assert torch.equal(keys.transpose(1, 2)[untouched], before[0].transpose(1, 2)[untouched])
    for r, at in ((3, slice(0, 5)), (1, slice(5, 12))):  # each prompt: causal SDPA over its row up to its column
        n = cols[at].max().item() + 1
        rep = heads // kv_heads
        kr, vr = (t[r, :, :n].float().repeat_interleave(rep, 0) for t in (keys, values))
        mask = torch.arange(n)[None] <= cols[at][:, None]
        ref = F.scaled_dot_product_attention(q[0, :, at], kr, vr, attn_mask=mask, scale=0.125)
        torch.testing.assert_close(out[at].view(-1, heads, dim), ref.transpose(0, 1), rtol=1e-5, atol=1e-6)


def test_a_quantised_model_gives_the_same_logits_with_and_without_the_kernels(tiny_llama_dir: Path) -> None:
    model, tok = build_base(str(tiny_llama_dir), device="cpu", dtype="float32")
    assert int8.apply(model, tok, "int8", "tiny") is not None
    model = copy.deepcopy(model)  # a quantised model copies (the library is shared, not copied)
    groups = [m for m in model.modules() if isinstance(m, int8.Group)]
    assert groups and all(g.kernels is not None for g in groups)
    loops = groups[0].kernels
    assert loops is not None
    ids = tok(["The cat sat on the mat.", "Hello there, how are you?"], return_tensors="pt", padding=True).input_ids

    def logits(kernels_: kernels.Kernels | None, vnni: bool) -> torch.Tensor:
        for g in groups:
            g.kernels, g.vnni = kernels_, vnni
            g._hold()  # packs or unpacks the weights
        assert all((g.packed is not None) == (vnni and loops.vnni) for g in groups)
        with torch.no_grad():
            return model(input_ids=ids).logits

    packed = logits(loops, True)  # the VNNI loop where this CPU has it
    fused = logits(loops, False)  # 2 x ~8 rows: within kernels.ROWS, the C loops run around torch._int_mm
    plain = logits(None, False)
    assert torch.equal(fused, plain)
    torch.testing.assert_close(packed, plain, rtol=1e-3, atol=2e-2)  # the outlier channels in int16 there
    assert torch.equal(logits(loops, True), packed)  # unpacked and packed again: the same weights


def test_the_vnni_loop_gives_int_mm_integers_and_the_torch_ops_bits(tmp_path: Path) -> None:
    k = kernels.load(tmp_path)
    assert k is not None
    from runtime.hardware import cpu_info

    assert k.vnni == {"avx512_vnni", "avx512bw"}.issubset(cpu_info()[1])  # built where the CPU has it
    if not k.vnni:  # elsewhere the groups keep torch._int_mm (the test above)
        return
    gen = torch.Generator().manual_seed(2)
    for rows, n, cols, o in ((33, 100, 83, 0), (1, 49, 576, 32), (40, 96, 1536, 5), (9, 3000, 576, 32)):
        x = torch.randn(rows, cols, generator=gen) * torch.rand(cols, generator=gen) * 30
        x[0, :40] = 0  # a row whose outlier channels may all be zero
        inv = torch.rand(cols, generator=gen)
        w = torch.randint(-127, 128, (n, cols), dtype=torch.int8, generator=gen)
        ws, bias = torch.rand(n, generator=gen) / 100, torch.randn(n, generator=gen)
        idx = torch.randperm(cols, generator=gen)[:o].sort().values
        wo = torch.randn(o, n, generator=gen) * torch.logspace(-3, 2, n)  # columns of very different sizes
        packed = kernels.Packed(w, wo if o else None)
        assert torch.equal(packed.unpack(), w) and packed.weights.numel() % (48 * 4) == 0
        q, scale = k.quantise(x, inv)
        exact = (q.long() @ w.long().t()).int()  # the integer product (torch._int_mm's, for any row count)
        if o == 0:  # no outliers, no bias: torch's dequantisation bits exactly
            assert torch.equal(k.qlinear(x, inv, packed, ws, None, None), k.dequantise(exact, scale, ws))
        got = k.qlinear(x, inv, packed, ws, idx if o else None, bias)
        assert torch.equal(got, kernels.torch_qlinear(x, inv, w, packed, ws, idx if o else None, bias))
        if o:  # the int16 outlier channels: within half a step of each side's scale, times the other side
            xo = x[:, idx]
            exact_float = k.dequantise(exact, scale, ws) + xo @ wo + bias
            x_step, w_step = xo.abs().amax(1, keepdim=True) / packed.lim, wo.abs().amax(0) / packed.lim
            bound = (x_step * wo.abs().sum(0) + xo.abs().sum(1, keepdim=True) * w_step) / 2 + (x_step * w_step) * o
            assert bool(((got - exact_float).abs() <= bound * 1.01 + 1e-4 * exact_float.abs() + 1e-5).all())


def test_without_a_working_compiler_the_torch_ops_are_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CC", "false")  # a "compiler" that fails
    with caplog.at_level(logging.WARNING):
        assert kernels.load(tmp_path) is None
    assert "int8 C kernels unavailable" in caplog.text
    assert not list((tmp_path / "kernels").glob("*.so"))
