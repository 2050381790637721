"""What the platform holds, for people and scripts (``-o table|json``), and the Airflow side from a terminal:

lifecycle runs list | datasets list | models list      training runs, dataset versions, registered versions
lifecycle logs RUN [--tail N] [--follow]               a training run's log
lifecycle trigger [DAG] [-p key=value …] [--wait]      start a DAG run, print its Airflow address, follow it
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.common import Output, OutputOption, fail, print_json, print_rows, settings

runs_app = typer.Typer(help="Training runs (Mongo training_runs, with their MLflow runs).", no_args_is_help=True)
datasets_app = typer.Typer(help="Dataset versions (Mongo datasets: lineage, parents, taint).", no_args_is_help=True)
Limit = Annotated[int, typer.Option("--limit", "-n", min=1, max=10000, help="Newest N.")]


def _iso(value: Any) -> str:
    return value.isoformat(timespec="seconds") if hasattr(value, "isoformat") else str(value or "")


@runs_app.command("list")
def runs_list(limit: Limit = 20, output: OutputOption = Output.table) -> None:
    """Training runs, newest first: status, dataset, final loss, the MLflow run and the Airflow run."""
    from lifecycle import links
    from lifecycle.store import TRAINING_RUNS, Store

    cfg = settings()
    with Store.connect(cfg) as store:
        docs = list(store.db[TRAINING_RUNS].find({}, {"config": 0}).sort("created_at", -1).limit(limit))
    rows: list[dict[str, Any]] = []
    for d in docs:
        airflow = d.get("airflow") or {}
        mlflow_id = d.get("mlflow_run_id")
        rows.append({
            "run_id": d["_id"], "status": d.get("status"), "dataset_id": d.get("dataset_id"),
            "created_at": _iso(d.get("created_at")), "finished_at": _iso(d.get("finished_at")) or None,
            "final_loss": (d.get("metrics") or {}).get("final_loss"), "base_model": d.get("base_model"),
            "error": d.get("error"), "mlflow_run_id": mlflow_id,
            "mlflow_url": links.mlflow_run(cfg, mlflow_id) if mlflow_id else None,
            "airflow_dag_id": airflow.get("dag_id"), "airflow_run_id": airflow.get("run_id"),
            "airflow_url": links.airflow_run(cfg, airflow["dag_id"], airflow["run_id"]) if airflow.get("run_id")
            else None,
        })  # fmt: skip
    if output != Output.json:
        for r in rows:
            r["loss"] = f"{r['final_loss']:.4f}" if isinstance(r["final_loss"], float) else r["final_loss"]
            r["created"] = r["created_at"][:16].replace("T", " ")
            r["dag"] = r["airflow_dag_id"] or ""
    cols = ["run_id", "status", "dataset_id", "created", "loss", "mlflow_run_id", "dag"]
    print_rows("training runs", rows, output, cols)


@datasets_app.command("list")
def datasets_list(limit: Limit = 20, output: OutputOption = Output.table) -> None:
    """Dataset versions, newest first: records, rejects, parents, source, tainted by a deletion."""
    from lifecycle.store import DATASETS, Store

    cfg = settings()
    with Store.connect(cfg) as store:
        docs = list(store.db[DATASETS].find({}, {"rejected_lines": 0}).sort("created_at", -1).limit(limit))
    rows = [{
        "dataset_id": d["_id"], "name": d.get("name"), "train": d.get("train"), "eval": d.get("eval"),
        "duplicates": d.get("duplicates"), "rejected": d.get("rejected"), "parents": list(d.get("parents") or []),
        "source": d.get("source"), "created_at": _iso(d.get("created_at")), "tainted": bool(d.get("tainted")),
        "path": d.get("path"),
    } for d in docs]  # fmt: skip
    if output != Output.json:
        for r in rows:
            r["parents"] = ", ".join(r["parents"])
            r["created"] = r["created_at"][:16].replace("T", " ")
            r["tainted"] = "tainted" if r["tainted"] else ""
    print_rows("dataset versions", rows, output,
               ["dataset_id", "name", "train", "eval", "rejected", "created", "tainted", "parents"])  # fmt: skip


def models_list(
    model: Annotated[str | None, typer.Option(help="Only this registered model.")] = None,
    limit: Limit = 50,
    output: OutputOption = Output.table,
) -> None:
    """Registered model versions, newest first: aliases (champion, challenger), run, taint, MLflow address."""
    from lifecycle import links, registry

    cfg = settings()
    mc = registry.client(cfg.mlflow_tracking_uri)
    names = [model] if model else [m.name for m in mc.search_registered_models(max_results=1000)]
    rows: list[dict[str, Any]] = []
    for name in names:
        try:
            found = mc.search_model_versions(f"name = '{name}'", max_results=limit)
        except Exception as exc:  # noqa: BLE001 — MLflow's errors name the model; shown as the one line
            fail(f"model {name!r}: {exc}")
        for v in sorted(found, key=lambda v: -int(v.version))[:limit]:
            rows.append({
                "model": name, "version": int(v.version), "aliases": sorted(v.aliases or []),
                "created_at": _iso(time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(v.creation_timestamp / 1000))),
                "run_id": v.run_id, "status": v.status, "tainted": (v.tags or {}).get("lifecycle.tainted"),
                "description": v.description or None, "mlflow_url": links.mlflow_version(cfg, name, v.version),
            })  # fmt: skip
    if output != Output.json:
        for r in rows:
            r["aliases"] = ", ".join(map(str, r["aliases"] or []))
            r["created"] = r["created_at"][:16].replace("T", " ")
    print_rows("registered model versions", rows, output,
               ["model", "version", "aliases", "created", "run_id", "tainted"])  # fmt: skip


def logs(
    run: Annotated[str, typer.Argument(help="Training run id (tr-…) or its MLflow run id.")],
    tail: Annotated[int, typer.Option(help="Only the last N lines (0: all).")] = 0,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing while the run is running.")] = False,
) -> None:
    """A training run's log (the trainer's output, as Airflow's fine_tune task saw it)."""
    from lifecycle.store import TRAINING_RUNS, Store

    cfg = settings()
    with Store.connect(cfg) as store:
        query = {"_id": run} if run.startswith("tr-") else {"mlflow_run_id": run}
        doc = store.db[TRAINING_RUNS].find_one(query)
        if doc is None:
            fail(f"no training run {run!r} in Mongo training_runs (`lifecycle runs list` shows them)")
        path = Path(str(doc.get("out_dir") or "")) / "train.log"
        if not path.is_file():
            fail(f"{doc['_id']} ({doc.get('status')}): no log at {path} (a Kubernetes run logs to its pods)")
        lines = path.read_text(errors="replace").splitlines(keepends=True)
        typer.echo("".join(lines[-tail:] if tail else lines), nl=False)
        pos = path.stat().st_size
        while follow and (store.get(TRAINING_RUNS, doc["_id"]) or {}).get("status") in ("queued", "running"):
            time.sleep(1)
            with path.open(errors="replace") as f:
                f.seek(pos)
                chunk = f.read()
                pos = f.tell()
            typer.echo(chunk, nl=False)


def _conf(params: list[str] | None, conf: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if conf:
        try:
            out = json.loads(conf)
        except json.JSONDecodeError as exc:
            fail(f"--conf: not JSON ({exc.msg} at column {exc.colno})")
        if not isinstance(out, dict):
            fail("--conf: expected a JSON object")
    for item in params or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            fail(f"--param {item!r}: expected key=value")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def trigger(
    dag_id: Annotated[str, typer.Argument(help="The DAG to run.")] = "llm_lifecycle",
    param: Annotated[
        list[str] | None, typer.Option("--param", "-p", help="key=value (JSON values parsed), repeatable.")
    ] = None,
    conf: Annotated[str | None, typer.Option(help="All params as one JSON object.")] = None,
    unpause: Annotated[bool, typer.Option(help="Unpause the DAG if it is paused (else its run would wait).")] = False,
    wait: Annotated[bool, typer.Option(help="Follow the run's tasks until it ends.")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to follow before giving up (exit 2).")] = 3600,
    output: OutputOption = Output.table,
) -> None:
    """Trigger a DAG run in Airflow with params (validated by Airflow against the DAG's form), print its
    address, and follow it to the end: exit 0 on success, 1 on failure, 2 on timeout."""
    from lifecycle import links
    from lifecycle.airflow_client import AirflowApiError, call

    cfg = settings()
    body = _conf(param, conf)
    try:
        dag = call(cfg, "GET", f"/api/v2/dags/{dag_id}")
        if dag.get("is_paused"):
            if not unpause:
                fail(f"DAG {dag_id} is paused: its run would wait until someone unpauses it (add --unpause)")
            call(cfg, "PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})
        run = call(cfg, "POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": body})
    except AirflowApiError as exc:
        detail: Any = exc.body
        with contextlib.suppress(json.JSONDecodeError, AttributeError):
            detail = json.loads(exc.body).get("detail", exc.body)
        fail(f"Airflow refused the run of {dag_id} (HTTP {exc.status}): {str(detail).strip()[:500]}")
    url = links.airflow_run(cfg, dag_id, run["dag_run_id"])
    typer.echo(f"{dag_id} run {run['dag_run_id']}: {url}", err=output == Output.json)
    state, tasks = str(run["state"]), dict[str, str]()
    if wait:
        state, tasks = follow(cfg, f"/api/v2/dags/{dag_id}/dagRuns/{run['dag_run_id']}", timeout)
    result = {"dag_id": dag_id, "run_id": run["dag_run_id"], "state": state, "url": url, "conf": body, "tasks": tasks}
    if output == Output.json:
        print_json(result)
    elif wait:
        typer.echo(f"{dag_id} run {run['dag_run_id']}: {state}")
    if wait and state not in ("success", "failed"):
        typer.echo(f"error: still {state} after {timeout:.0f} s (it goes on in Airflow: {url})", err=True)
        raise typer.Exit(2)
    if state == "failed":
        raise typer.Exit(1)


ENDED = ("success", "failed", "skipped", "upstream_failed", "removed")


def follow(cfg: Any, path: str, timeout: float) -> tuple[str, dict[str, str]]:
    """Follow a DAG run (its API path) until it ends or ``timeout`` passes: each task's end as a line,
    the count of ended tasks as a progress bar on a terminal. Returns the run's state and task states."""
    from cli.progress import tracking
    from lifecycle.airflow_client import call

    deadline = time.monotonic() + timeout
    seen: dict[str, str] = {}
    last = ""
    with tracking() as report:
        while True:
            state = call(cfg, "GET", path)["state"]
            tasks = {t["task_id"]: t["state"] for t in call(cfg, "GET", path + "/taskInstances")["task_instances"]}
            for task_id, st in tasks.items():
                if st in ENDED and st != seen.get(task_id):
                    report(f"{time.strftime('%H:%M:%S')} {task_id}: {st}")
            seen = tasks
            line = f"tasks {sum(st in ENDED for st in tasks.values())}/{max(len(tasks), 1)} {state}"
            if line != last:
                report(line)
                last = line
            if state in ("success", "failed") or time.monotonic() > deadline:
                return state, tasks
            time.sleep(2)  # polling a long run; the loop ends on its final state or the deadline
