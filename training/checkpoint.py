"""The distributed world of a training process and its checkpoints.

``setup_distributed`` joins torchrun's process group (gloo on CPU, nccl on GPU) or makes a world of
one. A checkpoint holds the adapter, the optimizer, every rank's RNG state and the step (the data
position follows from it); it is written under a temporary name and renamed once complete, so a
process killed mid-write never leaves a checkpoint that ``--resume`` would trust.
"""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as torch_dist
from torch import nn

from training.config import TrainConfig


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup_distributed() -> Dist:
    """Join the process group when launched by torchrun; a plain process is world of one."""
    if "RANK" not in os.environ:
        return Dist(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
        torch_dist.init_process_group("nccl", device_id=device)
    else:
        device = torch.device("cpu")
        torch_dist.init_process_group("gloo")
    return Dist(rank, world, local, device)


def latest_checkpoint(out_dir: Path) -> Path | None:
    ckpts = sorted((out_dir / "checkpoints").glob("step-*"))
    return ckpts[-1] if ckpts else None


def save_checkpoint(out_dir: Path, step: int, model: nn.Module, optimizer: Any, dist: Dist, cfg: TrainConfig) -> None:
    """Adapter, optimizer, RNG of every rank and the step (the data position follows from it)."""
    final = out_dir / "checkpoints" / f"step-{step:07d}"
    tmp = out_dir / "checkpoints" / f".step-{step:07d}.partial"
    if dist.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier(dist)
    rng = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state(dist.device)
    torch.save(rng, tmp / f"rng-rank{dist.rank}.pt")
    if dist.is_main:
        model.save_pretrained(tmp / "adapter")  # type: ignore[operator]
        torch.save({"step": step, "optimizer": optimizer.state_dict()}, tmp / "trainer_state.pt")
        cfg.save(tmp / "config.json")
    barrier(dist)
    if dist.is_main:
        tmp.rename(final)  # a checkpoint exists only once it is complete
        for old in sorted((out_dir / "checkpoints").glob("step-*"))[:-2]:
            shutil.rmtree(old, ignore_errors=True)
    barrier(dist)


def load_checkpoint(ckpt: Path, model: nn.Module, optimizer: Any, dist: Dist) -> int:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(ckpt / "adapter" / "adapter_model.safetensors"))
    state = torch.load(ckpt / "trainer_state.pt", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    rng_file = ckpt / f"rng-rank{dist.rank}.pt"
    if rng_file.exists():  # resuming with another world size keeps rank 0's stream only
        rng = torch.load(rng_file, weights_only=True)  # tensors and tuples of ints: nothing is unpickled
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"], dist.device)
    return int(state["step"])


def barrier(dist: Dist) -> None:
    """Wait for every rank (nothing to wait for in a world of one)."""
    if dist.enabled:
        torch_dist.barrier()
