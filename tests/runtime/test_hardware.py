"""The device/dtype policy: chosen by CPU flags and a measured probe, never by torch's 'supported'."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime import hardware
from runtime.hardware import HardwareError, choose, native_bf16


def test_native_bf16_needs_the_instruction_not_avx512() -> None:
    xeon_without = {"avx512f", "avx512bw", "avx512_vnni", "avx2"}  # the Xeon that emulates bf16 5x slower
    assert native_bf16(xeon_without) == ""
    assert native_bf16(xeon_without | {"avx512_bf16"}) == "avx512_bf16"
    assert native_bf16({"amx_bf16", "amx_tile"}) == "amx_bf16"


def test_a_cpu_without_native_bf16_gets_float32_without_probing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hardware, "cpu_info", lambda: ("Intel Xeon 2.5 GHz", {"avx512f", "avx512bw"}))
    monkeypatch.setattr(hardware, "_probe", lambda: pytest.fail("no probe without the instruction"))
    got = choose("auto", "cpu")
    assert (got.device, got.dtype) == ("cpu", "float32") and "no native bf16" in got.reason


def test_native_bf16_is_chosen_only_when_measured_faster(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(hardware, "cpu_info", lambda: ("EPYC", {"avx512_bf16"}))
    monkeypatch.setattr(hardware, "_probe", lambda: {"float32": 160.0, "bfloat16": 400.0})
    fast = choose("auto", "cpu", cache_dir=tmp_path / "a")
    assert fast.dtype == "bfloat16" and "400 vs float32 160" in fast.reason
    monkeypatch.setattr(hardware, "_probe", lambda: {"float32": 160.0, "bfloat16": 150.0})
    slow = choose("auto", "cpu", cache_dir=tmp_path / "b")
    assert slow.dtype == "float32" and "avx512_bf16 but" in slow.reason


def test_the_probe_is_measured_once_per_machine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(hardware, "cpu_info", lambda: ("EPYC", {"avx512_bf16"}))
    monkeypatch.setattr(hardware, "_probe", lambda: {"float32": 100.0, "bfloat16": 300.0})
    first = hardware.cpu_bf16_probe(tmp_path)
    monkeypatch.setattr(hardware, "_probe", lambda: pytest.fail("measured twice"))
    assert hardware.cpu_bf16_probe(tmp_path) == first
    assert len(list((tmp_path / "hardware").glob("bf16-probe-*.json"))) == 1


def test_the_real_probe_measures_both_dtypes(tmp_path: Path) -> None:
    figures = hardware._probe()
    assert figures["float32"] > 0 and figures["bfloat16"] > 0


def test_forced_and_invalid_choices() -> None:
    assert choose("float32", "cpu").reason == "float32 as configured"
    with pytest.raises(HardwareError, match="dtype must be one of auto, float32, bfloat16, float16, got 'fp8'"):
        choose("fp8")
    with pytest.raises(HardwareError, match="float16 is not supported for training"):
        choose("float16", "cpu", training=True)
    with pytest.raises(HardwareError, match="device must be auto, cpu or cuda"):
        choose("auto", "tpu")


def test_int8_weights_are_served_on_cpu_where_measured_faster(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cpu = hardware.Choice("cpu", "float32", "")
    assert hardware.serve_int8("float", cpu) == (False, "float weights as configured")
    assert hardware.serve_int8("int8", cpu) == (True, "int8 weights as configured")
    monkeypatch.setattr(hardware, "_int8_probe", lambda: {"int8": 560.0, "float32": 130.0, "bfloat16": 50.0})
    wanted, reason = hardware.serve_int8("auto", cpu, tmp_path / "a")
    assert wanted and reason == "matmul int8 560 GOP/s vs float32 130 GFLOP/s"
    monkeypatch.setattr(hardware, "_int8_probe", lambda: {"int8": 300.0, "float32": 130.0, "bfloat16": 290.0})
    wanted, reason = hardware.serve_int8("auto", hardware.Choice("cpu", "bfloat16", ""), tmp_path / "b")
    assert not wanted and "(< 1.5x): float weights" in reason  # against the dtype the base runs in
    with pytest.raises(HardwareError, match="int8 weights are served on CPU only; cuda serves bfloat16"):
        hardware.serve_int8("int8", hardware.Choice("cuda", "bfloat16", ""))
    assert hardware.serve_int8("auto", hardware.Choice("cuda", "bfloat16", ""))[0] is False
    with pytest.raises(HardwareError, match="serve_weights must be auto, float or int8, got 'int4'"):
        hardware.serve_int8("int4", cpu)


def test_the_real_int8_probe_measures_int8_and_float() -> None:
    figures = hardware._int8_probe()
    assert figures["int8"] > 0 and figures["float32"] > 0 and figures["bfloat16"] > 0
