"""The int8 C kernels: compiled here, bit-identical to the torch ops they replace (alone and inside a
quantised model), and the torch ops used, with a warning, where no kernel can be built."""

from __future__ import annotations

import copy
import logging
import shutil
from pathlib import Path

import pytest
import torch

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


def test_a_quantised_model_gives_the_same_logits_with_and_without_the_kernels(tiny_llama_dir: Path) -> None:
    model, tok = build_base(str(tiny_llama_dir), device="cpu", dtype="float32")
    assert int8.apply(model, tok, "int8", "tiny") is not None
    model = copy.deepcopy(model)  # a quantised model copies (the library is shared, not copied)
    groups = [m for m in model.modules() if isinstance(m, int8.Group)]
    assert groups and all(g.kernels is not None for g in groups)
    ids = tok(["The cat sat on the mat.", "Hello there, how are you?"], return_tensors="pt", padding=True).input_ids
    with torch.no_grad():
        fused = model(input_ids=ids).logits  # 2 x ~8 rows: within kernels.ROWS, the C loops run
        for g in groups:
            g.kernels = None
        plain = model(input_ids=ids).logits
    assert torch.equal(fused, plain)


def test_without_a_working_compiler_the_torch_ops_are_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CC", "false")  # a "compiler" that fails
    with caplog.at_level(logging.WARNING):
        assert kernels.load(tmp_path) is None
    assert "int8 C kernels unavailable" in caplog.text
    assert not list((tmp_path / "kernels").glob("*.so"))
