"""The lifecycle DAG: integrity of every DAG file, a REST-triggered run in the live Airflow on the
tiny model, and params validation at trigger time."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote

import pytest

from lifecycle import registry
from lifecycle.airflow_client import AirflowApiError, call, dag_ids, trigger_and_wait
from lifecycle.settings import Settings

DAGS = Path(__file__).resolve().parents[2] / "dags"
REPO = DAGS.parent


def toy_conf(base_model: Path, **params: object) -> dict[str, object]:
    """A run's conf that trains the tiny model on the shipped toy dataset."""
    data = {"dataset_path": str(REPO / "data/toy/train.jsonl"), "eval_path": str(REPO / "data/toy/eval.jsonl")}
    return {**data, "base_model": str(base_model), **params}


def load_dags() -> dict[str, object]:
    from airflow.sdk import DAG

    found = {}
    for path in sorted(DAGS.glob("*.py")):
        spec = importlib.util.spec_from_file_location(f"dagfile_{path.stem}", path)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        dags = [v for v in vars(module).values() if isinstance(v, DAG)]
        for d in dags:
            assert d.dag_id == path.stem, "DAG id = file name"
            found[d.dag_id] = d
    return found


def has_cycle(dag: object) -> bool:
    graph = {t.task_id: set(t.downstream_task_ids) for t in dag.tasks}  # type: ignore[attr-defined]
    state: dict[str, int] = {}

    def visit(node: str) -> bool:
        if state.get(node) == 1:
            return True
        if state.get(node) == 2:
            return False
        state[node] = 1
        if any(visit(n) for n in graph[node]):
            return True
        state[node] = 2
        return False

    return any(visit(n) for n in graph)


def test_every_dag_imports_and_is_well_formed() -> None:
    dags = load_dags()
    assert {"llm_lifecycle", "llm_lifecycle_retrain", "stack_check"} <= set(dags)
    for dag_id, dag in dags.items():
        assert not has_cycle(dag), dag_id
        assert dag.tags, dag_id  # type: ignore[attr-defined]
        for t in dag.tasks:  # type: ignore[attr-defined]
            assert t.owner == "llm-lifecycle", (dag_id, t.task_id)
            assert t.retries is not None, (dag_id, t.task_id)
    lc = dags["llm_lifecycle"]
    order = [t.task_id for t in lc.topological_sort()]  # type: ignore[attr-defined]
    assert order[:5] == ["ingest", "validate", "fine_tune", "evaluate", "promote"]
    assert set(order[5:]) == {"notify", "rollout_started", "follow_rollout"}
    assert order.index("rollout_started") < order.index("follow_rollout")
    assert {t.task_id: t.retries for t in lc.tasks}["evaluate"] >= 1  # type: ignore[attr-defined]


def test_cycle_checker_sees_a_cycle() -> None:
    class T:
        def __init__(self, i: str, down: set[str]) -> None:
            self.task_id, self.downstream_task_ids = i, down

    assert has_cycle(SimpleNamespace(tasks=[T("a", {"b"}), T("b", {"a"})]))
    assert not has_cycle(SimpleNamespace(tasks=[T("a", {"b"}), T("b", set())]))


@pytest.mark.stack
def test_rest_triggered_run_succeeds_and_registers_a_version(stack: Settings, tiny_llama_dir: Path) -> None:
    mc = registry.client(stack.mlflow_tracking_uri)

    def versions() -> int:
        return len(mc.search_model_versions(f"name = '{stack.model_name}'"))

    before = versions()
    conf = toy_conf(tiny_llama_dir, max_steps=2, eval_limit=4, dataset_name="toy")
    run = trigger_and_wait(stack, "llm_lifecycle", conf, timeout=900)
    assert run["state"] == "success", run
    tasks = run["tasks"]
    assert tasks.pop("follow_rollout") == "skipped"  # the default policy (direct) starts no rollout
    assert set(tasks.values()) == {"success"}, run
    assert versions() == before + 1
    # the validated dataset and the promotion decision are asset events (Airflow's Asset graph)
    query = f"/api/v2/assets/events?source_dag_id=llm_lifecycle&source_run_id={quote(run['dag_run_id'])}"
    emitted = {e["name"]: e for e in call(stack, "GET", query)["asset_events"]}
    assert emitted["lifecycle-datasets"]["extra"]["dataset_id"].startswith("ds-")
    assert emitted["lifecycle-datasets"]["source_task_id"] == "validate"
    model = emitted["lifecycle-models"]["extra"]
    assert model["model_name"] == stack.model_name and model["version"] == versions()
    # the promote task links to its MLflow run and to the version it registered
    path = f"/api/v2/dags/llm_lifecycle/dagRuns/{quote(run['dag_run_id'])}/taskInstances/promote/links"
    found = call(stack, "GET", path)["extra_links"]
    assert found["MLflow model version"].endswith(f"/#/models/{stack.model_name}/versions/{versions()}")
    assert "/#/runs/" in found["MLflow run"]


@pytest.mark.stack
@pytest.mark.parametrize(
    ("conf", "field"),
    [({"lora_r": 0}, "lora_r"), ({"backend": "slurm"}, "backend"), ({"learning_rate": "fast"}, "learning_rate")],
)
def test_invalid_params_are_refused_naming_the_field(stack: Settings, conf: dict, field: str) -> None:
    with pytest.raises(AirflowApiError) as err:
        call(stack, "POST", "/api/v2/dags/llm_lifecycle/dagRuns", {"logical_date": None, "conf": conf})
    assert err.value.status == 400
    assert f"Invalid input for param {field}" in err.value.body


@pytest.mark.stack
def test_retrain_dag_is_scheduled_and_finds_only_data_newer_than_the_champion(
    stack: Settings, tiny_llama_dir: Path, toy_dataset: Path, tmp_path: Path
) -> None:
    import uuid

    from lifecycle.settings import load_settings
    from lifecycle.store import Store
    from plugins import pipeline
    from training.config import TrainConfig
    from training.evaluate import evaluate
    from training.ingest import ingest, record_lineage
    from training.launch import run_training
    from training.promote import promote

    dag = call(stack, "GET", "/api/v2/dags/llm_lifecycle_retrain")
    assert dag["timetable_summary"] == stack.retrain_schedule
    assert dag["next_dagrun_run_after"] is not None

    name = f"retrain-{uuid.uuid4().hex[:8]}"
    params = {"model_name": name}
    assert pipeline.new_data_since_champion(params), "no champion yet: every dataset counts as new"
    s = load_settings(model_name=name)
    with Store.connect(s) as store:
        cfg = TrainConfig(base_model=str(tiny_llama_dir), dataset=str(toy_dataset), max_steps=1,
                          checkpoint_every=0, dtype="float32", out_dir=str(tmp_path / "run"))  # fmt: skip
        run = run_training(s, cfg, store=store)
        evaluate(s, store, run.mlflow_run_id, limit=2, max_new_tokens=2)
        promote(s, store, run.mlflow_run_id, margin=-1.0)
        assert pipeline.new_data_since_champion(params) == []  # short-circuit case
        rows = [{"instruction": f"fresh {uuid.uuid4()} {i}", "output": "yes"} for i in range(20)]
        (tmp_path / "new.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        ds = ingest(tmp_path / "new.jsonl", s.home / "datasets", name="fresh")
        record_lineage(store, ds, "new.jsonl")
    assert pipeline.new_data_since_champion(params) == [ds.id]
    merged = pipeline.merge_datasets([ds.id], params)
    assert merged == ds.id  # same content, same id


@pytest.mark.stack
def test_dag_test_runs_end_to_end_on_the_tiny_model(stack: Settings, tiny_llama_dir: Path) -> None:
    import os
    import subprocess
    import uuid

    from lifecycle.stack.airflow import airflow_env

    name = f"dagtest-{uuid.uuid4().hex[:8]}"
    conf = toy_conf(tiny_llama_dir, max_steps=1, eval_limit=2, model_name=name, promotion_margin=-1.0)
    # DAG.test() runs the tasks itself; were the DAG unpaused (the UI test unpauses it, and the test stack's
    # database outlives a run), the stack's scheduler would also start them and one side finds them "running"
    if "llm_lifecycle" in dag_ids(stack):
        call(stack, "PATCH", "/api/v2/dags/llm_lifecycle", {"is_paused": True})
    runner = Path(__file__).with_name("dag_test_runner.py")
    done = subprocess.run(
        [sys.executable, str(runner), str(DAGS / "llm_lifecycle.py"), "llm_lifecycle_dag", json.dumps(conf)],
        env={**os.environ, **airflow_env(stack)},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert "DAGTEST_STATE success" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    mc = registry.client(stack.mlflow_tracking_uri)
    assert [v.version for v in mc.search_model_versions(f"name = '{name}'")] == ["1"]
    assert registry.version_by_alias(mc, name, "champion").version == "1"


@pytest.mark.stack
def test_a_training_failure_fails_the_task_with_the_torchrun_error_and_keeps_the_champion(
    stack: Settings, tiny_llama_dir: Path, toy_dataset: Path, tmp_path: Path
) -> None:
    import shutil
    import uuid

    from lifecycle.settings import load_settings
    from lifecycle.store import TRAINING_RUNS, Store
    from training.config import TrainConfig
    from training.evaluate import evaluate
    from training.launch import run_training
    from training.promote import promote

    name = f"fail-{uuid.uuid4().hex[:6]}"
    s = load_settings(model_name=name)
    with Store.connect(s) as store:  # a champion to keep
        cfg = TrainConfig(base_model=str(tiny_llama_dir), dataset=str(toy_dataset), max_steps=1, checkpoint_every=0,
                          micro_batch_size=16, dtype="float32", out_dir=str(tmp_path / "champion"))  # fmt: skip
        first = run_training(s, cfg, store=store)
        evaluate(s, store, first.mlflow_run_id, limit=2, max_new_tokens=2)
        promote(s, store, first.mlflow_run_id, margin=-1.0)
    # A base model whose weights are missing: ingest and validation pass, the trainer process dies.
    broken = tmp_path / "no-weights"
    shutil.copytree(tiny_llama_dir, broken)
    (broken / "model.safetensors").unlink()
    conf = toy_conf(broken, max_steps=2, eval_limit=2, dataset_name="toy", model_name=name)
    run = trigger_and_wait(stack, "llm_lifecycle", conf, timeout=900)
    assert run["state"] == "failed" and run["tasks"]["fine_tune"] == "failed", run
    assert run["tasks"]["promote"] == "upstream_failed"
    path = f"/api/v2/dags/llm_lifecycle/dagRuns/{run['dag_run_id']}/taskInstances/fine_tune/logs/1"
    log = json.dumps(call(stack, "GET", path))
    assert "training exited with code 1" in log and "no-weights" in log, log[-3000:]
    mc = registry.client(s.mlflow_tracking_uri)
    assert registry.version_by_alias(mc, name, "champion").version == "1"
    assert len(mc.search_model_versions(f"name = '{name}'")) == 1
    with Store.connect(s) as store:
        failed = list(store.db[TRAINING_RUNS].find({"status": "failed", "config.base_model": str(broken)}))
    assert failed and all("exited with code 1" in d["error"] for d in failed)
