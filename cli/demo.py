"""``lifecycle demo``: everything end to end, the way a new user first sees the platform. Stack up,
base model pulled, the toy dataset sent to Kafka, the Airflow run it starts followed to its end,
then the champion served and its answers printed beside the base model's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.common import fail, settings
from cli.serve import ask
from cli.stack import models_pull, status, up
from lifecycle.settings import Settings

REPO = Path(__file__).resolve().parents[1]
DAG = "llm_lifecycle_kafka"


def demo(
    epochs: Annotated[float, typer.Option(help="Epochs of the demo training.")] = 5.0,
    max_steps: Annotated[int, typer.Option(help="Stop training after N steps (0: run the epochs).")] = 0,
    eval_limit: Annotated[int, typer.Option(help="Evaluate on the first N eval questions (0: all 200).")] = 0,
    wait: Annotated[bool, typer.Option(help="Follow the run until it ends.")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to follow the run before giving up (exit 2).")] = 3600,
) -> None:
    """Everything end to end: stack up, base model pulled, then the toy dataset sent to Kafka, which
    starts the lifecycle DAG in Airflow (ingest, fine-tune, evaluate, promote); follows the run."""
    from lifecycle.airflow_client import AirflowApiError

    up(None)
    models_pull("", "", False)
    try:
        status()
    except typer.Exit as exc:
        if exc.exit_code:
            raise
    cfg = settings()
    try:
        path = _trigger(cfg, {"epochs": epochs, "max_steps": max_steps, "eval_limit": eval_limit})
        if wait:
            _follow(cfg, path, timeout)
            _answers(cfg)
    except AirflowApiError as exc:
        fail(f"Airflow API: {exc}")


def _trigger(cfg: Settings, params: dict[str, Any]) -> str:
    """Publish the toy dataset to ``lifecycle.training-data`` and wait for the DAG run it starts;
    returns that run's API path."""
    from lifecycle import events, topics
    from lifecycle.airflow_client import call, dag_ids
    from lifecycle.stack.process import wait_for
    from lifecycle.v1 import events_pb2

    if wait_for(lambda: DAG in dag_ids(cfg), timeout=120) != "ok":
        fail(f"Airflow did not list {DAG} within 120 s; see {cfg.logs_dir / 'airflow-dag-processor.log'}")
    call(cfg, "PATCH", f"/api/v2/dags/{DAG}", {"is_paused": False})
    runs = f"/api/v2/dags/{DAG}/dagRuns?limit=100&order_by=-id"
    before = {r["dag_run_id"] for r in call(cfg, "GET", runs)["dag_runs"]}
    event = events.new_event(
        events_pb2.TrainingDataArrived, dataset="toy", uri=(REPO / "data/toy/train.jsonl").as_uri(),
        params={"eval_path": str(REPO / "data/toy/eval.jsonl"), **params},
    )  # fmt: skip
    events.publish(cfg, topics.TRAINING_DATA, "toy", event)
    typer.echo(f"published TrainingDataArrived {event.event_id} (toy dataset) to {topics.TRAINING_DATA}")

    def new_run() -> dict[str, Any] | None:
        return next((r for r in call(cfg, "GET", runs)["dag_runs"] if r["dag_run_id"] not in before), None)

    if wait_for(lambda: new_run() is not None, timeout=120, interval=0.5) != "ok":
        fail(f"no {DAG} run started within 120 s; see {cfg.logs_dir / 'airflow-triggerer.log'}")
    run = new_run()
    assert run is not None
    from lifecycle import links

    typer.echo(f"Airflow run: {links.airflow_run(cfg, DAG, run['dag_run_id'])}")
    return f"/api/v2/dags/{DAG}/dagRuns/{run['dag_run_id']}"


def _follow(cfg: Settings, path: str, timeout: float) -> None:
    """Follow a run until it ends (task by task; a progress bar on a terminal), then the promotion decision."""
    from cli.inventory import follow
    from lifecycle.airflow_client import AirflowApiError, call

    state, _ = follow(cfg, path, timeout)
    typer.echo(f"run {state}")
    if state not in ("success", "failed"):
        typer.echo(f"error: the run is still {state} after {timeout:.0f} s (it goes on in Airflow)", err=True)
        raise typer.Exit(2)
    try:
        result = call(cfg, "GET", path + "/taskInstances/promote/xcomEntries/return_value")["value"]
        typer.echo(f"promotion: {result}")
    except AirflowApiError:
        pass
    if state != "success":
        raise typer.Exit(1)


def _answers(cfg: Settings) -> None:
    """Serve the champion and print its answers next to the base model's, for three eval questions."""
    from lifecycle import registry
    from lifecycle.stack.base import StackError
    from lifecycle.stack.serving import gateway_url, start_serving
    from training.base_model import resolve_base_model
    from training.generation import generate, load_model

    champion = registry.version_by_alias(registry.client(cfg.mlflow_tracking_uri), cfg.model_name, registry.CHAMPION)
    if champion is None:
        typer.echo(f"no champion of {cfg.model_name} in the registry yet: nothing to serve")
        return
    rows = [json.loads(line) for line in (REPO / "data/toy/eval.jsonl").read_text().splitlines()[:3]]
    questions = [r["instruction"] for r in rows]
    base, tok = load_model(resolve_base_model(cfg.base_model, cfg.models_dir))
    before = generate(base, tok, [[{"role": "user", "content": q}] for q in questions], max_new_tokens=48)
    try:
        start_serving(cfg, cfg.worker_count(), report=typer.echo)
    except StackError as exc:
        fail(f"serving the champion v{champion.version}: {exc}")
    typer.echo(f"serving the champion at {gateway_url(cfg)} (stop: lifecycle serve --stop)")
    for q, b, r in zip(questions, before, rows, strict=True):
        answer = ask(cfg, q, 48)
        typer.echo(f"\nQ: {q}\n  expected:          {r['output']}\n  base model:        {b}")
        typer.echo(f"  champion (v{answer['version']}): {answer['text']}")
