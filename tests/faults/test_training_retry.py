"""A training launcher killed (SIGKILL, with its trainer) mid-run, then run again under the same run id
as an Airflow retry does: the new attempt resumes from the folder's checkpoint, the dead attempt's
MLflow run is ended FAILED (it stayed RUNNING), and while a trainer still writes the folder no second
one may."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from lifecycle import registry
from lifecycle.settings import Settings
from lifecycle.stack.process import wait_for
from lifecycle.store import TRAINING_RUNS, Store
from training.config import TrainConfig
from training.launch import TrainingError, run_training

pytestmark = pytest.mark.stack

LAUNCH = """
import json, sys
from lifecycle.settings import load_settings
from lifecycle.store import Store
from training.config import TrainConfig
from training.launch import run_training
cfg = TrainConfig(**json.loads(sys.argv[1]))
s = load_settings()
with Store.connect(s) as store:
    run_training(s, cfg, store=store, run_id=sys.argv[2])
"""


def test_a_retry_after_the_launcher_was_killed_resumes_and_ends_the_dead_attempt(
    stack: Settings, tiny_llama_dir: Path, toy_dataset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    cfg = TrainConfig(base_model=str(tiny_llama_dir), dataset=str(toy_dataset), max_steps=30, checkpoint_every=5,
                      micro_batch_size=8, dtype="float32", out_dir=str(out))  # fmt: skip
    run_id = f"tr-retry-{uuid.uuid4().hex[:8]}"
    first = subprocess.Popen([sys.executable, "-c", LAUNCH, json.dumps(cfg.to_dict()), run_id],
                             start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        assert wait_for(lambda: (out / "checkpoints" / "step-0000010").exists(), timeout=300) == "ok"
        # While that trainer writes the folder, a second attempt is refused, naming the folder.
        with Store.connect(stack) as store, pytest.raises(TrainingError, match="is being written by another trainer"):
            run_training(stack, TrainConfig(**cfg.to_dict()), store=store, run_id=run_id)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the launcher and its trainer, as a node loss would
        first.wait()
    assert not (out / "result.json").exists()

    with Store.connect(stack) as store:
        dead = store.get(TRAINING_RUNS, run_id)
        assert dead is not None and dead["status"] == "running"  # nobody was left to say otherwise
        mc = registry.client(stack.mlflow_tracking_uri)
        assert mc.get_run(dead["mlflow_run_id"]).info.status == "RUNNING"
        lines: list[str] = []
        # The trainer's processes may outlive the kill for a moment; the lock says when they are gone.
        assert wait_for(lambda: _free(out), timeout=60) == "ok"
        again = run_training(stack, TrainConfig(**cfg.to_dict()), store=store, run_id=run_id, report=lines.append)
    assert any(line.startswith("resumed from step-00000") for line in lines), lines[-20:]
    assert any("was left RUNNING (its launcher died): ended FAILED" in line for line in lines)
    old = mc.get_run(dead["mlflow_run_id"])
    assert old.info.status == "FAILED" and old.data.tags["lifecycle.superseded_by"] == again.mlflow_run_id
    assert mc.get_run(again.mlflow_run_id).info.status == "FINISHED" and again.metrics["steps"] == 30
    with Store.connect(stack) as store:
        doc = store.get(TRAINING_RUNS, run_id)
    assert doc is not None and doc["status"] == "succeeded" and doc["mlflow_run_id"] == again.mlflow_run_id


def _free(out: Path) -> bool:
    """No process holds the folder's trainer lock any more."""
    import fcntl

    fd = os.open(out / ".trainer.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True
