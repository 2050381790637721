"""The ``lifecycle`` command line.

    lifecycle up | down | status      the local stack (Kafka, MongoDB, MLflow, Airflow)
    lifecycle models pull             the base model into the model cache, offline
    lifecycle demo                    set everything up and show it working

Every command exits non-zero with a one-line reason on failure. This module is the one edge that
reaches into ``training``/``serving``, and only inside commands (lazy imports), so ``lifecycle``
itself never depends on torch.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from lifecycle.settings import Settings, SettingsError, load_settings

app = typer.Typer(
    help="llm-lifecycle: fine-tune, evaluate, promote and serve an LLM on Airflow, MLflow and Kafka.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="Base models in the model cache.", no_args_is_help=True)
app.add_typer(models_app, name="models")

ServiceNames = Annotated[
    list[str] | None,
    typer.Argument(help="Services to act on (kafka, mongo, mlflow, airflow, airflow-scheduler, …); default all."),
]


def fail(message: str) -> NoReturn:
    """Print a one-line reason (plus any detail lines) to stderr and exit 1."""
    first, _, rest = message.partition("\n")
    typer.echo(f"error: {first}", err=True)
    if rest.strip():
        typer.echo(rest, err=True)
    raise typer.Exit(1)


def settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        fail(str(exc))


def _human_bytes(n: int) -> str:
    return f"{n / 2**20:.0f} MiB" if n else "-"


@app.command()
def up(names: ServiceNames = None) -> None:
    """Start the local stack (idempotent: running services are left alone)."""
    from lifecycle.stack import manager
    from lifecycle.stack.base import StackError

    cfg = settings()
    t0 = time.monotonic()
    try:
        started = manager.up(cfg, names, report=lambda m: typer.echo(f"  {m}"))
    except StackError as exc:
        fail(str(exc))
    typer.echo(f"stack up in {time.monotonic() - t0:.1f}s ({len(started)} started)")


@app.command()
def down(names: ServiceNames = None) -> None:
    """Stop the local stack; data stays under LIFECYCLE_HOME."""
    from lifecycle.stack import manager
    from lifecycle.stack.base import StackError

    try:
        stopped = manager.down(settings(), names, report=lambda m: typer.echo(f"  {m}"))
    except StackError as exc:
        fail(str(exc))
    typer.echo(f"stopped {len(stopped)} service(s)")


@app.command()
def status() -> None:
    """Show each service: state, address, version and resident memory."""
    from rich.console import Console
    from rich.table import Table

    from lifecycle.stack import manager
    from lifecycle.stack.airflow import admin_credentials

    cfg = settings()
    rows = manager.status(cfg)
    table = Table(title=f"llm-lifecycle local stack ({cfg.home})")
    for col in ("service", "state", "address", "version", "RSS", "pid"):
        table.add_column(col)
    colour = {"up": "green", "unhealthy": "yellow", "down": "red"}
    for r in rows:
        table.add_row(
            r.name, f"[{colour[r.state]}]{r.state}[/]", r.address, r.version, _human_bytes(r.rss), str(r.pid or "-")
        )
    console = Console(width=max(Console().width, 110))
    console.print(table)
    total = sum(r.rss for r in rows)
    console.print(f"total RSS: {_human_bytes(total)}    logs: {cfg.logs_dir}")
    creds = admin_credentials(cfg)
    if creds:
        console.print(f"Airflow UI: http://{cfg.host}:{cfg.airflow_port}  user: {creds[0]}  password: {creds[1]}")
    if any(r.state != "up" for r in rows):
        raise typer.Exit(3)  # like `systemctl status`: scripts can tell a degraded stack


@models_app.command("pull")
def models_pull(force: Annotated[bool, typer.Option(help="Convert again even if cached.")] = False) -> None:
    """Materialise the default base model (SmolLM2-135M-Instruct) offline into the model cache."""
    cfg = settings()
    from training.base_model import DEFAULT_MODEL, ModelError, pull_default_model

    if cfg.base_model != DEFAULT_MODEL:
        fail(f"`models pull` materialises {DEFAULT_MODEL}; LIFECYCLE_BASE_MODEL={cfg.base_model} is used as given")
    t0 = time.monotonic()
    try:
        pulled = pull_default_model(cfg.models_dir, force=force, report=lambda m: typer.echo(f"  {m}"))
    except ModelError as exc:
        fail(str(exc))
    typer.echo(
        f"{DEFAULT_MODEL}: {pulled.path} ({pulled.parameters / 1e6:.0f}M parameters, {time.monotonic() - t0:.1f}s)"
    )
    typer.echo(f"  check: {pulled.check_text!r}")


def _dataset_dir(cfg: Settings, dataset: str) -> Path:
    """A dataset given as a folder or as an id under the state dir."""
    path = Path(dataset).expanduser()
    if (path / "train.jsonl").exists():
        return path
    by_id = cfg.home / "datasets" / dataset
    if (by_id / "train.jsonl").exists():
        return by_id
    fail(f"no dataset {dataset!r} (neither a folder with train.jsonl nor an id in {cfg.home / 'datasets'})")


@app.command()
def ingest(
    source: Annotated[str, typer.Argument(help="JSONL file (chat or instruction records), or - for stdin.")],
    name: Annotated[str, typer.Option(help="Dataset name.")] = "dataset",
    eval_file: Annotated[Path | None, typer.Option(help="Held-out eval JSONL; default: split from SOURCE.")] = None,
    eval_fraction: Annotated[float, typer.Option(help="Share of records held out when no --eval-file.")] = 0.1,
    seed: Annotated[int, typer.Option(help="Seed of the train/eval split.")] = 0,
    max_seq_len: Annotated[int, typer.Option(help="Reject records longer than this many tokens.")] = 512,
) -> None:
    """Validate, deduplicate and split JSONL records into a versioned dataset (lineage in Mongo)."""
    _ingest(settings(), source, name, eval_file, eval_fraction, seed, max_seq_len)


def _ingest(
    cfg: Settings, source: str, name: str, eval_file: Path | None, eval_fraction: float, seed: int, max_seq_len: int
) -> Path:
    from lifecycle.store import Store
    from training.base_model import load_tokenizer
    from training.ingest import IngestError, record_lineage
    from training.ingest import ingest as do_ingest

    tokenizer = load_tokenizer(cfg.base_model, cfg.models_dir)
    src = sys.stdin if source == "-" else source
    try:
        ds = do_ingest(src, cfg.home / "datasets", name=name, eval_source=eval_file, eval_fraction=eval_fraction,
                       seed=seed, tokenizer=tokenizer, max_seq_len=max_seq_len)  # fmt: skip
    except IngestError as exc:
        fail(str(exc))
    for r in ds.rejected[:20]:
        typer.echo(f"  rejected {r.source} line {r.line}: {r.reason}", err=True)
    if len(ds.rejected) > 20:
        typer.echo(f"  … and {len(ds.rejected) - 20} more rejected lines (see {ds.path}/manifest.json)", err=True)
    with Store.connect(cfg) as store:
        new = record_lineage(store, ds, "<stdin>" if source == "-" else str(Path(source).resolve()))
    s = ds.summary()
    typer.echo(f"dataset {ds.id} ({'new' if new else 'already ingested'}): {s['train']} train, {s['eval']} eval, "
               f"{s['duplicates']} duplicates dropped, {s['rejected']} rejected -> {ds.path}")  # fmt: skip
    return ds.path


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train(
    ctx: typer.Context,
    dataset: Annotated[str, typer.Argument(help="Dataset id or folder (from `lifecycle ingest`).")],
    nproc: Annotated[int, typer.Option(help="Processes (torchrun --nproc-per-node); GPUs on a GPU machine.")] = 1,
) -> None:
    """Fine-tune LoRA adapters on a dataset, tracked in MLflow and Mongo.

    Extra flags go to the trainer (see `python -m training.finetune --help`), e.g.
    `--epochs 3 --lora-r 16 --learning-rate 1e-3 --config recipe.yaml`.
    """
    cfg = settings()
    run = _train(cfg, _dataset_dir(cfg, dataset), nproc, list(ctx.args))
    typer.echo(f"training run {run.run_id} succeeded: MLflow run {run.mlflow_run_id}, "
               f"final loss {run.metrics['final_loss']:.4f}, {run.metrics['tokens_per_sec']:.0f} tokens/s")  # fmt: skip


def _train(cfg: Settings, dataset: Path, nproc: int, extra: list[str]) -> Any:
    from lifecycle.store import Store
    from training.base_model import resolve_base_model
    from training.config import ConfigError, make_parser, resolve
    from training.train import TrainingError, run_training

    if nproc < 1:
        fail(f"--nproc must be >= 1, got {nproc}")
    try:
        args = make_parser().parse_args(extra)
        base = args.base_model or resolve_base_model(cfg.base_model, cfg.models_dir)
        tcfg = resolve(args, base_model=base, dataset=str(dataset))
        tcfg.check_world(nproc)
    except ConfigError as exc:
        fail(str(exc))
    except SystemExit:
        fail("invalid trainer flags (see `python -m training.finetune --help`)")
    with Store.connect(cfg) as store:
        try:
            return run_training(cfg, tcfg, nproc=nproc, store=store, report=lambda m: typer.echo(f"  {m}"))
        except TrainingError as exc:
            fail(str(exc))


@app.command()
def evaluate(
    run: Annotated[
        str, typer.Option(help="The candidate: training run id (tr-…) or MLflow run id, as `lifecycle train` prints.")
    ],
    limit: Annotated[int, typer.Option(help="Evaluate only the first N eval items (0: all).")] = 0,
) -> None:
    """Compare a candidate with the champion (or the base model) on the dataset's eval split."""
    _print_eval(_evaluate(settings(), run, limit))


def _evaluate(cfg: Settings, run: str, limit: int) -> dict[str, Any]:
    from lifecycle.store import Store
    from training.evaluate import evaluate as do_evaluate

    with Store.connect(cfg) as store:
        run = _mlflow_run_id(store, run)
        try:
            return do_evaluate(cfg, store, run, limit=limit, report=lambda m: typer.echo(f"  {m}"))
        except ValueError as exc:
            fail(str(exc))


def _mlflow_run_id(store: Any, run: str) -> str:
    """A training run id (``tr-…``, the Mongo ``training_runs`` id) resolved to its MLflow run id."""
    from lifecycle.store import TRAINING_RUNS

    if not run.startswith("tr-"):
        return run
    doc = store.get(TRAINING_RUNS, run)
    if doc is None:
        fail(f"--run {run}: no such training run in Mongo `training_runs` (the id `lifecycle train` printed)")
    if not doc.get("mlflow_run_id"):
        fail(f"--run {run}: the training run has no MLflow run (status {doc.get('status')})")
    return str(doc["mlflow_run_id"])


def _print_eval(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"evaluation on {result['dataset_id']} ({result['items']} items)")
    base = result["baseline"]
    label = base["kind"] + (f" v{base['version']}" if base["version"] else "")
    for col in ("metric", label, "candidate"):
        table.add_column(col)
    for key in ("accuracy", "exact_match", "perplexity"):
        table.add_row(key, f"{base['metrics'][key]:.3f}", f"{result['candidate']['metrics'][key]:.3f}")
    console = Console(width=max(Console().width, 110))
    console.print(table)
    for s in result["samples"]:
        console.print(f"Q: {s['question']}\n  reference: {s['reference']}\n  {label}: {s['baseline']}\n"
                      f"  candidate: {s['candidate']}")  # fmt: skip


@app.command()
def promote(
    run: Annotated[
        str | None, typer.Option(help="The evaluated candidate: its training run id (tr-…) or MLflow run id.")
    ] = None,
    margin: Annotated[float, typer.Option(help="Accuracy the candidate must gain over the champion.")] = 0.0,
    tolerance: Annotated[float, typer.Option(help="Allowed relative perplexity regression.")] = 0.25,
    rollback: Annotated[bool, typer.Option("--rollback", help="Move champion back to the previous version.")] = False,
) -> None:
    """Register the candidate; make it champion if it wins the gate, else challenger."""
    cfg = settings()
    from lifecycle.store import Store
    from training.promote import PromotionError
    from training.promote import promote as do_promote
    from training.promote import rollback as do_rollback

    if not rollback and not run:
        fail("--run is required (or --rollback)")
    with Store.connect(cfg) as store:
        run = _mlflow_run_id(store, run) if run else run
        try:
            if rollback:
                do_rollback(cfg, store, report=lambda m: typer.echo(f"  {m}"))
            else:
                res = do_promote(cfg, store, run, margin=margin, tolerance=tolerance,  # type: ignore[arg-type]
                                 report=lambda m: typer.echo(f"  {m}"))  # fmt: skip
                state = "unchanged (already done)" if res.already_done else res.alias
                typer.echo(f"{res.model_name} v{res.version}: {state} — {res.reason}")
        except PromotionError as exc:
            fail(str(exc))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def pipeline(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="JSONL training records.")],
    eval_file: Annotated[Path | None, typer.Option(help="Held-out eval JSONL.")] = None,
    name: Annotated[str, typer.Option(help="Dataset name.")] = "dataset",
    nproc: Annotated[int, typer.Option(help="Training processes.")] = 1,
    margin: Annotated[float, typer.Option(help="Promotion margin on accuracy.")] = 0.0,
    limit: Annotated[int, typer.Option(help="Evaluate only the first N eval items (0: all).")] = 0,
) -> None:
    """ingest -> train -> evaluate -> promote in a row (no Airflow), with a summary table."""
    from rich.console import Console
    from rich.table import Table

    cfg = settings()
    t0 = time.monotonic()
    typer.echo("[1/4] ingest")
    ds_dir = _ingest(cfg, source, name, eval_file, eval_fraction=0.1, seed=0, max_seq_len=512)
    typer.echo("[2/4] train")
    run = _train(cfg, ds_dir, nproc, list(ctx.args))
    typer.echo("[3/4] evaluate")
    result = _evaluate(cfg, run.mlflow_run_id, limit)
    _print_eval(result)
    typer.echo("[4/4] promote")
    promote(run=run.mlflow_run_id, margin=margin, tolerance=0.25, rollback=False)
    table = Table(title=f"pipeline done in {time.monotonic() - t0:.0f}s")
    for col in ("dataset", "training run", "MLflow run", "final loss", "accuracy", "baseline accuracy"):
        table.add_column(col)
    table.add_row(ds_dir.name, run.run_id, run.mlflow_run_id, f"{run.metrics['final_loss']:.4f}",
                  f"{result['candidate']['metrics']['accuracy']:.3f}",
                  f"{result['baseline']['metrics']['accuracy']:.3f}")  # fmt: skip
    Console(width=max(Console().width, 110)).print(table)


@app.command()
def demo(
    epochs: Annotated[float, typer.Option(help="Epochs of the demo training.")] = 5.0,
    max_steps: Annotated[int, typer.Option(help="Stop training after N steps (0: run the epochs).")] = 0,
    eval_limit: Annotated[int, typer.Option(help="Evaluate on the first N eval questions (0: all 200).")] = 0,
    wait: Annotated[bool, typer.Option(help="Follow the run until it ends.")] = True,
) -> None:
    """Everything end to end: stack up, base model pulled, then the toy dataset sent to Kafka, which
    starts the lifecycle DAG in Airflow (ingest, fine-tune, evaluate, promote); follows the run."""
    up(None)
    models_pull(False)
    try:
        status()
    except typer.Exit as exc:
        if exc.exit_code:
            raise
    _demo_run(settings(), {"epochs": epochs, "max_steps": max_steps, "eval_limit": eval_limit}, wait)


def _demo_run(cfg: Settings, params: dict[str, Any], wait: bool) -> None:
    from lifecycle import events, topics
    from lifecycle.airflow_client import AirflowApiError, call, dag_ids
    from lifecycle.stack.process import wait_for
    from lifecycle.v1 import events_pb2

    dag = "llm_lifecycle_kafka"
    repo = Path(__file__).resolve().parents[1]
    try:
        if wait_for(lambda: dag in dag_ids(cfg), timeout=120) != "ok":
            fail(f"Airflow did not list {dag} within 120 s; see {cfg.logs_dir / 'airflow-dag-processor.log'}")
        call(cfg, "PATCH", f"/api/v2/dags/{dag}", {"is_paused": False})
        before = {
            r["dag_run_id"] for r in call(cfg, "GET", f"/api/v2/dags/{dag}/dagRuns?limit=100&order_by=-id")["dag_runs"]
        }
        event = events.new_event(
            events_pb2.TrainingDataArrived, dataset="toy", uri=(repo / "data/toy/train.jsonl").as_uri(),
            params={"eval_path": str(repo / "data/toy/eval.jsonl"), **params},
        )  # fmt: skip
        events.publish(cfg, topics.TRAINING_DATA, "toy", event)
        typer.echo(f"published TrainingDataArrived {event.event_id} (toy dataset) to {topics.TRAINING_DATA}")

        def new_run() -> dict[str, Any] | None:
            runs = call(cfg, "GET", f"/api/v2/dags/{dag}/dagRuns?limit=100&order_by=-id")["dag_runs"]
            return next((r for r in runs if r["dag_run_id"] not in before), None)

        if wait_for(lambda: new_run() is not None, timeout=120, interval=0.5) != "ok":
            fail(f"no {dag} run started within 120 s; see {cfg.logs_dir / 'airflow-triggerer.log'}")
        run = new_run()
        assert run is not None
        path = f"/api/v2/dags/{dag}/dagRuns/{run['dag_run_id']}"
        typer.echo(f"Airflow run: http://{cfg.host}:{cfg.airflow_port}/dags/{dag}/runs/{run['dag_run_id']}")
        if wait:
            _follow(cfg, path)
            _demo_answers(cfg, repo)
    except AirflowApiError as exc:
        fail(f"Airflow API: {exc}")


def _demo_answers(cfg: Settings, repo: Path) -> None:
    """Serve the champion and print its answers next to the base model's, for three eval questions."""
    import json

    from serving import launcher
    from serving.loader import resolve_version
    from training.base_model import resolve_base_model
    from training.generation import generate, load_model

    version = resolve_version(cfg, cfg.model_name, "champion")
    if version is None:
        typer.echo(f"no champion of {cfg.model_name} in the registry yet: nothing to serve")
        return
    rows = [json.loads(line) for line in (repo / "data/toy/eval.jsonl").read_text().splitlines()[:3]]
    questions = [r["instruction"] for r in rows]
    base, tok = load_model(resolve_base_model(cfg.base_model, cfg.models_dir))
    before = generate(base, tok, [[{"role": "user", "content": q}] for q in questions], max_new_tokens=48)
    try:
        launcher.start(cfg, cfg.workers, report=typer.echo)
    except RuntimeError as exc:
        fail(f"serving the champion v{version}: {exc}")
    typer.echo(f"serving the champion at {launcher.gateway_url(cfg)} (stop: lifecycle serve --stop)")
    for q, b, r in zip(questions, before, rows, strict=True):
        answer = _query(cfg, q, 48)
        typer.echo(f"\nQ: {q}\n  expected:          {r['output']}\n  base model:        {b}")
        typer.echo(f"  champion (v{answer['version']}): {answer['text']}")


def _query(cfg: Settings, prompt: str, max_tokens: int) -> dict[str, Any]:
    import json
    import urllib.error
    import urllib.request

    from serving import launcher

    req = urllib.request.Request(
        launcher.gateway_url(cfg) + "/v1/generate",
        data=json.dumps({"prompt": prompt, "max_tokens": max_tokens}).encode(),
        headers={"Content-Type": "application/json",
                 **({"Authorization": f"Bearer {cfg.api_keys[0]}"} if cfg.api_keys else {})},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return dict(json.loads(resp.read()))
    except urllib.error.HTTPError as exc:
        fail(f"gateway answered {exc.code}: {exc.read().decode(errors='replace')}")
    except OSError as exc:
        fail(f"gateway at {launcher.gateway_url(cfg)} is not answering ({exc}); start it with `lifecycle serve`")


@app.command()
def serve(
    workers: Annotated[int, typer.Option(help="gRPC inference workers (default LIFECYCLE_WORKERS).")] = 0,
    model_path: Annotated[str, typer.Option(help="Serve a local HF folder instead of the champion.")] = "",
    detach: Annotated[bool, typer.Option(help="Leave the gateway and workers running in the background.")] = False,
    stop: Annotated[bool, typer.Option("--stop", help="Stop a detached gateway and its workers.")] = False,
) -> None:
    """The gateway (REST + OpenAI API) on LIFECYCLE_GATEWAY_PORT and N gRPC workers serving the champion;
    workers hot-swap to each promoted version."""
    from serving import launcher

    cfg = settings()
    if stop:
        launcher.stop(cfg, report=typer.echo)
        return
    try:
        launcher.start(cfg, workers or cfg.workers, model_path, report=typer.echo)
    except RuntimeError as exc:
        launcher.stop(cfg, report=lambda m: None)
        fail(str(exc))
    typer.echo(f"gateway ready: {launcher.gateway_url(cfg)}/v1  (OpenAI base_url)")
    if detach:
        return
    try:
        while launcher.ready(cfg) or True:
            time.sleep(1)  # foreground until Ctrl-C
    except KeyboardInterrupt:
        launcher.stop(cfg, report=typer.echo)


@app.command()
def query(
    prompt: Annotated[str, typer.Argument(help="The question.")],
    max_tokens: Annotated[int, typer.Option(help="Tokens to generate at most.")] = 64,
) -> None:
    """Ask the served model (POST /v1/generate on the gateway)."""
    answer = _query(settings(), prompt, max_tokens)
    typer.echo(answer["text"])
    typer.echo(f"({answer['model']} v{answer['version']}, {answer['usage']['completion_tokens']} tokens)", err=True)


def _follow(cfg: Settings, path: str) -> None:
    """Print task state changes of a run until it ends, then the promotion decision."""
    from lifecycle.airflow_client import AirflowApiError, call

    seen: dict[str, str] = {}
    while True:
        for t in call(cfg, "GET", path + "/taskInstances")["task_instances"]:
            if t["state"] and seen.get(t["task_id"]) != t["state"]:
                seen[t["task_id"]] = t["state"]
                typer.echo(f"  {time.strftime('%H:%M:%S')} {t['task_id']}: {t['state']}")
        state = call(cfg, "GET", path)["state"]
        if state in ("success", "failed"):
            break
        time.sleep(2)  # polling a long run; the loop ends on the run's own final state
    typer.echo(f"run {state}")
    try:
        result = call(cfg, "GET", path + "/taskInstances/promote/xcomEntries/return_value")["value"]
        typer.echo(f"promotion: {result}")
    except AirflowApiError:
        pass
    if state != "success":
        raise typer.Exit(1)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        if os.environ.get("LIFECYCLE_LOG_LEVEL") == "DEBUG":
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"error: {type(exc).__name__}: {first} (LIFECYCLE_LOG_LEVEL=DEBUG shows the traceback)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
