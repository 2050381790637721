"""``lifecycle ingest | train | evaluate | promote | pipeline``: the lifecycle's steps without Airflow,
each a thin call into ``training.steps`` with its output for a terminal."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.common import Output, OutputOption, console, fail, print_json, report, results_only, settings
from cli.progress import tracking
from lifecycle.settings import Settings


def ingest(
    source: Annotated[
        str, typer.Argument(help="JSONL/JSON/Parquet file or folder, path or URI (file://, s3://…), or - for stdin.")
    ],
    name: Annotated[str, typer.Option(help="Dataset name.")] = "dataset",
    eval_file: Annotated[Path | None, typer.Option(help="Held-out eval JSONL; default: split from SOURCE.")] = None,
    eval_fraction: Annotated[float, typer.Option(help="Share of records held out when no --eval-file.")] = 0.1,
    seed: Annotated[int, typer.Option(help="Seed of the train/eval split.")] = 0,
    max_seq_len: Annotated[int, typer.Option(help="Reject records longer than this many tokens.")] = 512,
    output: OutputOption = Output.table,
) -> None:
    """Validate, deduplicate and split records (chat, instruction or prompt-completion) into a
    versioned dataset (lineage in Mongo)."""
    _ingest(settings(), source, name, eval_file, output, eval_fraction=eval_fraction, seed=seed,
            max_seq_len=max_seq_len)  # fmt: skip


def _ingest(cfg: Settings, source: str, name: str, eval_file: Path | None, output: Output = Output.table,
            **options: Any) -> Path:  # fmt: skip
    from training import steps
    from training.ingest import IngestError

    label = "<stdin>" if source == "-" else source if "://" in source else str(Path(source).resolve())
    try:
        with results_only():
            ds, new = steps.ingest(cfg, sys.stdin if source == "-" else source, label, name=name,
                                   eval_source=eval_file, **options)  # fmt: skip
    except (IngestError, steps.StepError) as exc:
        fail(str(exc))
    for r in ds.rejected[:20]:
        typer.echo(f"  rejected {r.where}: {r.reason}", err=True)
    if len(ds.rejected) > 20:
        typer.echo(f"  … and {len(ds.rejected) - 20} more rejected lines (see {ds.path}/manifest.json)", err=True)
    s = ds.summary()
    if output == Output.json:
        rejected = [{"where": r.where, "reason": r.reason} for r in ds.rejected]
        print_json({**s, "dataset_id": ds.id, "new": new, "path": str(ds.path), "rejected_lines": rejected})
        return ds.path
    typer.echo(f"dataset {ds.id} ({'new' if new else 'already ingested'}): {s['train']} train, {s['eval']} eval, "
               f"{s['duplicates']} duplicates dropped, {s['rejected']} rejected -> {ds.path}")  # fmt: skip
    return ds.path


def train(
    ctx: typer.Context,
    dataset: Annotated[str, typer.Argument(help="Dataset id or folder (from `lifecycle ingest`).")],
    nproc: Annotated[int, typer.Option(help="Processes (torchrun --nproc-per-node); GPUs on a GPU machine.")] = 1,
    output: OutputOption = Output.table,
) -> None:
    """Fine-tune LoRA adapters on a dataset, tracked in MLflow and Mongo.

    Other flags go to the trainer (listed below), e.g. `--epochs 3 --lora-r 16 --learning-rate 1e-3
    --config recipe.yaml`. A progress bar (step, loss, ETA) shows on a terminal.
    """
    from training.steps import StepError, dataset_dir

    cfg = settings()
    try:
        folder = dataset_dir(cfg, dataset)
    except StepError as exc:
        fail(str(exc))
    run = _train(cfg, folder, nproc, list(ctx.args))
    from lifecycle import links

    url = links.mlflow_run(cfg, run.mlflow_run_id)
    if output == Output.json:
        print_json({"run_id": run.run_id, "mlflow_run_id": run.mlflow_run_id, "mlflow_url": url,
                    "metrics": run.metrics})  # fmt: skip
        return
    typer.echo(f"MLflow run: {url}")
    typer.echo(f"training run {run.run_id} succeeded: MLflow run {run.mlflow_run_id}, "
               f"final loss {run.metrics['final_loss']:.4f}, {run.metrics['tokens_per_sec']:.0f} tokens/s")  # fmt: skip


def trainer_flags() -> str:
    """The trainer's own flags (``training/config.py``), for ``lifecycle train --help``."""
    from training.config import make_parser

    lines = []
    for action in make_parser()._actions:
        if not action.option_strings or action.dest in ("help", "dataset", "mlflow_run_id", "tracking_uri"):
            continue
        flag = "/".join(o for o in action.option_strings if o.startswith("--"))
        default = "" if action.default in (None, argparse.SUPPRESS) else f" (default {action.default})"
        lines.append(f"{flag}: {' '.join((action.help or '').split()).rstrip('.')}{default}")
    return "Trainer flags:\n\n" + "\n\n".join(lines)


def _train(cfg: Settings, dataset: Path, nproc: int, extra: list[str]) -> Any:
    from training import steps
    from training.base_model import resolve_base_model
    from training.config import ConfigError, make_parser, resolve
    from training.launch import TrainingError

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
    try:
        with tracking() as progress, results_only():
            return steps.train(cfg, tcfg, nproc, progress)
    except TrainingError as exc:
        fail(str(exc))


RunOption = Annotated[
    str, typer.Option(help="The candidate: training run id (tr-…) or MLflow run id, as `lifecycle train` prints.")
]


def evaluate(
    run: RunOption,
    limit: Annotated[int, typer.Option(help="Evaluate only the first N eval items (0: all).")] = 0,
    output: OutputOption = Output.table,
) -> None:
    """Compare a candidate with the champion (or the base model) on the dataset's eval split."""
    result = _evaluate(settings(), run, limit)
    print_json(result) if output == Output.json else _print_eval(result)


def _evaluate(cfg: Settings, run: str, limit: int) -> dict[str, Any]:
    from training import steps

    try:
        with tracking() as progress, results_only():
            return steps.evaluate(cfg, run, limit, progress)
    except ValueError as exc:  # StepError too
        fail(str(exc))


def _print_eval(result: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"evaluation on {result['dataset_id']} ({result['items']} items)")
    base = result["baseline"]
    label = base["kind"] + (f" v{base['version']}" if base["version"] else "")
    for col in ("metric", label, "candidate"):
        table.add_column(col)
    for key in ("accuracy", "exact_match", "token_f1", "rouge_l", "perplexity"):
        if key in result["candidate"]["metrics"] and key in base["metrics"]:
            table.add_row(key, f"{base['metrics'][key]:.3f}", f"{result['candidate']['metrics'][key]:.3f}")
    out = console()
    out.print(table)
    if result.get("preview"):
        g = result["preview"]
        out.print(
            f"paired {g['metric']} on {g['n']} items ({g['test']}): effect {g['effect']:+.3f}, "
            f"{g['confidence']:.0%} CI [{g['ci_low']:+.3f}, {g['ci_high']:+.3f}], p={g['p_value']:.3g}"
        )
    for s in result["samples"]:
        out.print(f"Q: {s['question']}\n  reference: {s['reference']}\n  {label}: {s['baseline']}\n"
                  f"  candidate: {s['candidate']}")  # fmt: skip


def promote(
    run: Annotated[
        str | None, typer.Option(help="The evaluated candidate: its training run id (tr-…) or MLflow run id.")
    ] = None,
    margin: Annotated[float, typer.Option(help="Per-item score the candidate must gain over the champion.")] = 0.0,
    confidence: Annotated[
        float, typer.Option(help="Confidence of the paired test (exact McNemar / bootstrap) the gain must pass.")
    ] = 0.95,
    tolerance: Annotated[float, typer.Option(help="Allowed relative perplexity regression.")] = 0.25,
    rollback: Annotated[bool, typer.Option("--rollback", help="Move champion back to the previous version.")] = False,
    output: OutputOption = Output.table,
) -> None:
    """Register the candidate; make it champion if it wins the gate, else challenger."""
    from training import steps
    from training.promote import PromotionError

    if not rollback and not run:
        fail("--run is required (or --rollback)")
    cfg = settings()
    try:
        if rollback:
            steps.rollback(cfg, report)
            return
        assert run is not None
        with results_only():
            res = steps.promote(cfg, run, report if output != Output.json else _to_stderr, margin=margin,
                                tolerance=tolerance, confidence=confidence)  # fmt: skip
    except (PromotionError, steps.StepError) as exc:
        fail(str(exc))
    from dataclasses import asdict

    from lifecycle import links

    url = links.mlflow_version(cfg, res.model_name, res.version)
    if output == Output.json:
        print_json({**asdict(res), "mlflow_url": url})
        return
    state = "unchanged (already done)" if res.already_done else res.alias
    typer.echo(f"{res.model_name} v{res.version}: {state} — {res.reason}")
    typer.echo(f"  MLflow: {url}")


def _to_stderr(line: str) -> None:
    typer.echo(f"  {line}", err=True)


def pipeline(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="JSONL training records.")],
    eval_file: Annotated[Path | None, typer.Option(help="Held-out eval JSONL.")] = None,
    name: Annotated[str, typer.Option(help="Dataset name.")] = "dataset",
    nproc: Annotated[int, typer.Option(help="Training processes.")] = 1,
    margin: Annotated[float, typer.Option(help="Promotion margin on the per-item score.")] = 0.0,
    confidence: Annotated[float, typer.Option(help="Confidence of the gate's paired test.")] = 0.95,
    limit: Annotated[int, typer.Option(help="Evaluate only the first N eval items (0: all).")] = 0,
) -> None:
    """ingest -> train -> evaluate -> promote in a row (no Airflow), with a summary table."""
    from rich.table import Table

    cfg = settings()
    t0 = time.monotonic()
    typer.echo("[1/4] ingest")
    ds_dir = _ingest(cfg, source, name, eval_file)
    typer.echo("[2/4] train")
    run = _train(cfg, ds_dir, nproc, list(ctx.args))
    typer.echo("[3/4] evaluate")
    result = _evaluate(cfg, run.mlflow_run_id, limit)
    _print_eval(result)
    typer.echo("[4/4] promote")
    promote(
        run=run.mlflow_run_id, margin=margin, confidence=confidence, tolerance=0.25, rollback=False, output=Output.table
    )
    table = Table(title=f"pipeline done in {time.monotonic() - t0:.0f}s")
    metric = result.get("gate_metric", "accuracy")
    for col in ("dataset", "training run", "MLflow run", "final loss", metric, f"baseline {metric}"):
        table.add_column(col)
    table.add_row(ds_dir.name, run.run_id, run.mlflow_run_id, f"{run.metrics['final_loss']:.4f}",
                  f"{result['candidate']['metrics'].get(metric, float('nan')):.3f}",
                  f"{result['baseline']['metrics'].get(metric, float('nan')):.3f}")  # fmt: skip
    console().print(table)
