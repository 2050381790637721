"""The trainer on the tiny model: DDP matches one process, kill -9 + --resume matches a clean run,
and the outputs are what a user needs (safetensors adapter, optional merged weights)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lifecycle.stack.process import wait_for
from training.config import ConfigError, TrainConfig, make_parser, resolve

# float32 and no dropout: differences between runs then come only from summation order.
COMMON = ["--dtype", "float32", "--lora-dropout", "0", "--global-batch-size", "16", "--learning-rate", "5e-3",
          "--log-every", "1"]  # fmt: skip


def losses(out_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def run_trainer(args: list[str], nproc: int = 1, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    entry = ["-m", "training.finetune", *args]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *entry]
    else:
        cmd = [sys.executable, *entry]
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=600)


def test_two_processes_follow_the_loss_curve_of_one(tiny_llama_dir: Path, toy_dataset: Path, tmp_path: Path) -> None:
    base = ["--base-model", str(tiny_llama_dir), "--dataset", str(toy_dataset), "--max-steps", "12",
            "--micro-batch-size", "4", "--checkpoint-every", "0", *COMMON]  # fmt: skip
    one = run_trainer([*base, "--out-dir", str(tmp_path / "one")])
    assert one.returncode == 0, one.stdout + one.stderr
    two = run_trainer([*base, "--out-dir", str(tmp_path / "two")], nproc=2)
    assert two.returncode == 0, two.stdout + two.stderr
    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(a) == len(b) == 12
    assert a[-1] < a[0]  # it learns
    # Stated tolerance: 1e-4 relative per step (seen: ~2e-6; float sums in another order).
    assert max(abs(x - y) / x for x, y in zip(a, b, strict=True)) < 1e-4
    assert json.loads((tmp_path / "two" / "result.json").read_text())["world_size"] == 2


def test_kill_9_then_resume_ends_where_a_clean_run_ends(
    tiny_llama_dir: Path, toy_dataset: Path, tmp_path: Path
) -> None:
    args = ["--base-model", str(tiny_llama_dir), "--dataset", str(toy_dataset), "--max-steps", "40",
            "--micro-batch-size", "8", "--checkpoint-every", "5", *COMMON]  # fmt: skip
    clean = run_trainer([*args, "--out-dir", str(tmp_path / "clean")])
    assert clean.returncode == 0, clean.stderr

    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "training.finetune", *args, "--out-dir", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: (out / "checkpoints" / "step-0000015").exists(), timeout=300) == "ok"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (out / "result.json").exists(), "the run must have been killed before it finished"

    resumed = run_trainer([*args, "--out-dir", str(out), "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from step-" in resumed.stdout
    final_clean = json.loads((tmp_path / "clean" / "result.json").read_text())["final_loss"]
    final_resumed = json.loads((out / "result.json").read_text())["final_loss"]
    assert abs(final_resumed - final_clean) / final_clean < 0.01
    assert len(list((out / "checkpoints").glob("step-*"))) <= 2  # old checkpoints are pruned


def test_outputs_are_safetensors_and_merged_weights_load(
    tiny_llama_dir: Path, toy_dataset: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    done = run_trainer(["--base-model", str(tiny_llama_dir), "--dataset", str(toy_dataset), "--max-steps", "2",
                        "--micro-batch-size", "16", "--merge", "--out-dir", str(tmp_path), *COMMON])  # fmt: skip
    assert done.returncode == 0, done.stderr
    adapter = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json"} <= adapter
    assert not any(n.endswith((".bin", ".pt")) for n in adapter)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert not any("lora" in n for n, _ in merged.named_parameters())
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["max_steps"] == 2 and saved["merge"] is True


def test_config_layers_and_errors_name_the_flag(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("lora_r: 4\nepochs: 2\nlearning_rate: 0.01\n")
    cfg = resolve(make_parser().parse_args(["--config", str(recipe), "--lora-r", "8"]))
    assert (cfg.lora_r, cfg.epochs, cfg.learning_rate) == (8, 2, 0.01)  # flag > YAML > default
    with pytest.raises(ConfigError, match="--lora-r must be > 0, got 0"):
        TrainConfig(lora_r=0)
    with pytest.raises(ConfigError, match="--lora-dropout must be in"):
        TrainConfig(lora_dropout=1.5)
    recipe.write_text("dtype: float16\n")  # a recipe's value is checked like a flag's choices
    with pytest.raises(ConfigError, match="--dtype must be one of auto, float32, bfloat16, got 'float16'"):
        resolve(make_parser().parse_args(["--config", str(recipe)]))
    with pytest.raises(ConfigError, match="--attention must be one of auto, eager, sdpa"):
        TrainConfig(attention="flash")  # type: ignore[arg-type]
    recipe.write_text("lora_rank: 4\n")
    with pytest.raises(ConfigError, match="unknown key 'lora_rank'"):
        resolve(make_parser().parse_args(["--config", str(recipe)]))
    with pytest.raises(ConfigError, match="must be divisible by the number of processes"):
        TrainConfig(global_batch_size=15).check_world(2)
    text = make_parser().format_help()  # every field documented, a "%" in a docstring included
    assert "--lora-dropout" in text and "17% of a step" in text and "--no-merge" in text


def test_numbers_from_json_are_coerced_or_named() -> None:
    cfg = TrainConfig(max_steps=2.0, learning_rate="0.01")  # type: ignore[arg-type]
    assert (cfg.max_steps, type(cfg.max_steps), cfg.learning_rate) == (2, int, 0.01)
    with pytest.raises(ConfigError, match=r"--max-steps must be an integer, got 2\.5"):
        TrainConfig(max_steps=2.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="--epochs must be a number, got 'x'"):
        TrainConfig(epochs="x")  # type: ignore[arg-type]
