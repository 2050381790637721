"""Latency from an event to a started DAG run: Kafka message (AssetWatcher) vs REST trigger, same run.

    .venv/bin/python bench/trigger_latency.py [--n 5]

Against the running local stack (`lifecycle up`). Each sample publishes one TrainingDataArrived
event to lifecycle.training-data and measures publish -> the run's start_date of
``llm_lifecycle_kafka``; the baseline triggers ``stack_check`` through the REST API and measures
request -> start_date. The runs themselves are tiny (a 2-layer random Llama, 1 step) so they do
not queue behind each other. Prints p50 and max of both and the ratio of the p50s.
"""

from __future__ import annotations

import datetime as dt
import json
import statistics
import sys
import tempfile
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    import argparse

    from lifecycle import events, topics
    from lifecycle.airflow_client import call, dag_ids
    from lifecycle.settings import load_settings
    from lifecycle.stack.process import wait_for
    from lifecycle.v1 import events_pb2
    from training.base_model import DEFAULT_MODEL, build_tiny_llama, resolve_base_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5)
    args = parser.parse_args()
    s = load_settings()
    tiny = build_tiny_llama(Path(resolve_base_model(DEFAULT_MODEL, s.models_dir)), Path(tempfile.mkdtemp()) / "tiny")
    for dag in ("llm_lifecycle_kafka", "stack_check"):
        assert wait_for(lambda d=dag: d in dag_ids(s), timeout=120) == "ok", dag
        call(s, "PATCH", f"/api/v2/dags/{dag}", {"is_paused": False})

    def started(dag: str, before: set[str]) -> dt.datetime:
        def new() -> list[dict]:
            rs = call(s, "GET", f"/api/v2/dags/{dag}/dagRuns?limit=100&order_by=-id")["dag_runs"]
            return [r for r in rs if r["dag_run_id"] not in before and r.get("start_date")]

        assert wait_for(lambda: bool(new()), timeout=120, interval=0.2) == "ok"
        run = new()[0]
        path = f"/api/v2/dags/{dag}/dagRuns/{run['dag_run_id']}"
        wait_for(lambda: call(s, "GET", path)["state"] in ("success", "failed"), timeout=300, interval=1)
        return dt.datetime.fromisoformat(run["start_date"])

    def runs(dag: str) -> set[str]:
        return {
            r["dag_run_id"] for r in call(s, "GET", f"/api/v2/dags/{dag}/dagRuns?limit=100&order_by=-id")["dag_runs"]
        }

    kafka, rest = [], []
    recs = [json.loads(line) for line in (REPO / "data/toy/train.jsonl").read_text().splitlines()[:32]]
    for i in range(args.n):
        before = runs("llm_lifecycle_kafka")
        msg = events.new_event(
            events_pb2.TrainingDataArrived, dataset="latency",
            records=[*recs, {"instruction": f"latency {uuid.uuid4()}", "output": "ok"}],
            params={"base_model": str(tiny), "max_steps": 1, "eval_limit": 1, "model_name": "latency-bench"},
        )  # fmt: skip
        t0 = dt.datetime.now(dt.UTC)
        events.publish(s, topics.TRAINING_DATA, "latency", msg)
        kafka.append((started("llm_lifecycle_kafka", before) - t0).total_seconds())
        before = runs("stack_check")
        t0 = dt.datetime.now(dt.UTC)
        call(s, "POST", "/api/v2/dags/stack_check/dagRuns", {"logical_date": None})
        rest.append((started("stack_check", before) - t0).total_seconds())
        print(f"sample {i + 1}: kafka {kafka[-1]:.2f} s, rest {rest[-1]:.2f} s", flush=True)
    print(f"\nKafka message -> run start: p50 {statistics.median(kafka):.2f} s, max {max(kafka):.2f} s")
    print(f"REST trigger  -> run start: p50 {statistics.median(rest):.2f} s, max {max(rest):.2f} s")
    print(f"ratio of p50s kafka / rest: {statistics.median(kafka) / statistics.median(rest):.2f}x")


if __name__ == "__main__":
    main()
