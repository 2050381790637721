"""llm_rollout in the live Airflow: one deferred task per stage (in the triggerer, no worker slot),
each released when the rollout record moves past its stage; the run ends as the rollout does."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from lifecycle import registry, rollout
from lifecycle.airflow_client import call, dag_ids, trigger_and_wait
from lifecycle.settings import Settings
from lifecycle.stack.process import wait_for
from lifecycle.store import ROLLOUTS, Store
from plugins.rollout_watch import outcome

pytestmark = pytest.mark.stack
REPO = Path(__file__).resolve().parents[2]


def start_run(s: Settings, conf: dict[str, Any]) -> str:
    assert wait_for(lambda: "llm_rollout" in dag_ids(s), timeout=120) == "ok"
    call(s, "PATCH", "/api/v2/dags/llm_rollout", {"is_paused": False})
    run = call(s, "POST", "/api/v2/dags/llm_rollout/dagRuns", {"logical_date": None, "conf": conf})
    return f"/api/v2/dags/llm_rollout/dagRuns/{run['dag_run_id']}"


def states(s: Settings, path: str) -> dict[tuple[str, int], str]:
    tis = call(s, "GET", path + "/taskInstances")["task_instances"]
    return {(t["task_id"], t["map_index"]): t["state"] for t in tis}


def follow(s: Settings, store: Store, version: int, ending: str) -> None:
    """A rollout of ``version`` with two stages and its DAG run: stage 0 passes, then ``ending``."""
    rollout.start(s, store, s.model_name, version, 1, "canary")
    path = start_run(s, {"model_name": s.model_name, "version": version})
    waiting = {("stage", 0): "deferred", ("stage", 1): "deferred"}
    assert wait_for(lambda: waiting.items() <= states(s, path).items(), timeout=180, interval=1) == "ok"
    assert cli(s, "pause", version)["state"] == "paused"  # the operator's hands: the CLI
    assert cli(s, "resume", version)["state"] == "running"
    doc = store.get(ROLLOUTS, f"{s.model_name}:{version}")
    assert doc is not None and rollout.step(s, store, doc, "test: stage 0 passed", {})
    assert wait_for(lambda: states(s, path)[("stage", 0)] == "success", timeout=60, interval=1) == "ok"
    assert states(s, path)[("stage", 1)] == "deferred"
    rollout.control(s, store, s.model_name, ending, version)
    assert wait_for(lambda: call(s, "GET", path)["state"] in ("success", "failed"), timeout=120, interval=1) == "ok"
    final, run_state = states(s, path), call(s, "GET", path)["state"]
    want = "failed" if ending == "abort" else "success"
    assert (run_state, final[("stage", 1)], final[("outcome", -1)]) == (want, want, want), final
    shown = cli(s, "status", version)
    assert shown["state"] == ("aborted" if ending == "abort" else "promoted")
    assert [d["type"] for d in shown["decisions"]][-1] == (
        "RolloutRolledBack" if ending == "abort" else "RolloutPromoted"
    )


def cli(s: Settings, action: str, version: int) -> dict[str, Any]:
    """``lifecycle rollout ACTION`` as a user runs it; ``status --json`` after any action."""
    args = [sys.executable, "-m", "cli.main", "rollout"]
    if action != "status":
        done = subprocess.run([*args, action, "--model", s.model_name, "--version", str(version)],
                              capture_output=True, text=True, timeout=120, cwd=REPO)  # fmt: skip
        assert done.returncode == 0, done.stderr
    done = subprocess.run([*args, "status", "--model", s.model_name, "--version", str(version), "--json"],
                          capture_output=True, text=True, timeout=120, cwd=REPO)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_each_stage_waits_deferred_and_the_run_ends_as_the_rollout_does(stack: Settings) -> None:
    s = stack.model_copy(update={"rollout_steps": [50.0, 100.0], "model_name": f"dagroll-{uuid.uuid4().hex[:6]}"})
    mc = registry.client(s.mlflow_tracking_uri)
    mc.create_registered_model(s.model_name)
    for _ in range(3):
        mc.create_model_version(s.model_name, "s3://nonexistent/model")
    mc.set_registered_model_alias(s.model_name, registry.CHAMPION, "1")
    with Store.connect(s) as store:
        follow(s, store, 2, "abort")
        follow(s, store, 3, "promote")
    assert registry.version_by_alias(mc, s.model_name, registry.CHAMPION).version == "3"


def test_stage_outcomes_from_the_record() -> None:
    stages = [{"kind": "shadow", "share": 0.25}, {"kind": "canary", "share": 0.05}, {"kind": "canary", "share": 1.0}]
    doc = {"stages": stages, "stage": 1, "state": "running", "decisions": [{"seq": 0, "type": "RolloutStarted",
           "stage": "shadow", "share": 0.25, "reason": "r0"}, {"seq": 1, "type": "RolloutStepped", "stage": "canary",
           "share": 0.05, "reason": "no worse"}]}  # fmt: skip
    assert outcome(doc, 0)["outcome"] == "passed" and outcome(doc, 1) is None and outcome(doc, 2) is None
    ended = {**doc, "state": "rolled_back"}
    assert outcome(ended, 1)["outcome"] == "rolled_back" and outcome(ended, 2)["outcome"] == "not_reached"
    assert outcome({**doc, "state": "promoted"}, 2)["outcome"] == "passed" and outcome(None, 0)["outcome"] == "missing"


def test_a_lifecycle_run_whose_promotion_starts_a_rollout_triggers_llm_rollout(
    stack: Settings, tiny_llama_dir: Path
) -> None:
    from tests.dags.test_llm_lifecycle import toy_conf

    name = f"lcroll-{uuid.uuid4().hex[:6]}"
    s = stack.model_copy(update={"model_name": name})
    conf = toy_conf(tiny_llama_dir, max_steps=1, eval_limit=2, model_name=name, promotion_margin=-1.0)
    first = trigger_and_wait(s, "llm_lifecycle", conf, timeout=900)
    assert first["state"] == "success" and first["tasks"]["follow_rollout"] == "skipped", first  # champion at once
    second = trigger_and_wait(s, "llm_lifecycle", {**conf, "rollout_policy": "canary"}, timeout=900)
    assert second["state"] == "success" and second["tasks"]["follow_rollout"] == "success", second
    path = f"/api/v2/dags/llm_rollout/dagRuns/rollout__{second['dag_run_id']}"
    assert call(s, "GET", path)["conf"] == {"model_name": name, "version": 2}
    assert wait_for(lambda: states(s, path).get(("stage", 0)) == "deferred", timeout=180, interval=1) == "ok"
    with Store.connect(s) as store:
        rollout.control(s, store, name, "abort")
    assert wait_for(lambda: call(s, "GET", path)["state"] in ("success", "failed"), timeout=120, interval=1) == "ok"
    assert call(s, "GET", path)["state"] == "failed" and states(s, path)[("stage", 0)] == "failed"
