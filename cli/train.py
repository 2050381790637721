"""``lifecycle ingest | train | evaluate | promote | pipeline``: the lifecycle's steps without Airflow,
each a thin call into ``training.steps`` with its output for a terminal."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.common import console, fail, report, settings
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
) -> None:
    """Validate, deduplicate and split records (chat, instruction or prompt-completion) into a
    versioned dataset (lineage in Mongo)."""
    _ingest(settings(), source, name, eval_file, eval_fraction=eval_fraction, seed=seed, max_seq_len=max_seq_len)


def _ingest(cfg: Settings, source: str, name: str, eval_file: Path | None, **options: Any) -> Path:
    from training import steps
    from training.ingest import IngestError

    label = "<stdin>" if source == "-" else source if "://" in source else str(Path(source).resolve())
    try:
        ds, new = steps.ingest(cfg, sys.stdin if source == "-" else source, label, name=name, eval_source=eval_file,
                               **options)  # fmt: skip
    except (IngestError, steps.StepError) as exc:
        fail(str(exc))
    for r in ds.rejected[:20]:
        typer.echo(f"  rejected {r.where}: {r.reason}", err=True)
    if len(ds.rejected) > 20:
        typer.echo(f"  … and {len(ds.rejected) - 20} more rejected lines (see {ds.path}/manifest.json)", err=True)
    s = ds.summary()
    typer.echo(f"dataset {ds.id} ({'new' if new else 'already ingested'}): {s['train']} train, {s['eval']} eval, "
               f"{s['duplicates']} duplicates dropped, {s['rejected']} rejected -> {ds.path}")  # fmt: skip
    return ds.path


def train(
    ctx: typer.Context,
    dataset: Annotated[str, typer.Argument(help="Dataset id or folder (from `lifecycle ingest`).")],
    nproc: Annotated[int, typer.Option(help="Processes (torchrun --nproc-per-node); GPUs on a GPU machine.")] = 1,
) -> None:
    """Fine-tune LoRA adapters on a dataset, tracked in MLflow and Mongo.

    Extra flags go to the trainer (see `python -m training.finetune --help`), e.g.
    `--epochs 3 --lora-r 16 --learning-rate 1e-3 --config recipe.yaml`.
    """
    from training.steps import StepError, dataset_dir

    cfg = settings()
    try:
        folder = dataset_dir(cfg, dataset)
    except StepError as exc:
        fail(str(exc))
    run = _train(cfg, folder, nproc, list(ctx.args))
    typer.echo(f"training run {run.run_id} succeeded: MLflow run {run.mlflow_run_id}, "
               f"final loss {run.metrics['final_loss']:.4f}, {run.metrics['tokens_per_sec']:.0f} tokens/s")  # fmt: skip


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
        return steps.train(cfg, tcfg, nproc, report)
    except TrainingError as exc:
        fail(str(exc))


RunOption = Annotated[
    str, typer.Option(help="The candidate: training run id (tr-…) or MLflow run id, as `lifecycle train` prints.")
]


def evaluate(
    run: RunOption,
    limit: Annotated[int, typer.Option(help="Evaluate only the first N eval items (0: all).")] = 0,
) -> None:
    """Compare a candidate with the champion (or the base model) on the dataset's eval split."""
    _print_eval(_evaluate(settings(), run, limit))


def _evaluate(cfg: Settings, run: str, limit: int) -> dict[str, Any]:
    from training import steps

    try:
        return steps.evaluate(cfg, run, limit, report)
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
        res = steps.promote(cfg, run, report, margin=margin, tolerance=tolerance, confidence=confidence)
    except (PromotionError, steps.StepError) as exc:
        fail(str(exc))
    state = "unchanged (already done)" if res.already_done else res.alias
    typer.echo(f"{res.model_name} v{res.version}: {state} — {res.reason}")


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
    promote(run=run.mlflow_run_id, margin=margin, confidence=confidence, tolerance=0.25, rollback=False)
    table = Table(title=f"pipeline done in {time.monotonic() - t0:.0f}s")
    metric = result.get("gate_metric", "accuracy")
    for col in ("dataset", "training run", "MLflow run", "final loss", metric, f"baseline {metric}"):
        table.add_column(col)
    table.add_row(ds_dir.name, run.run_id, run.mlflow_run_id, f"{run.metrics['final_loss']:.4f}",
                  f"{result['candidate']['metrics'].get(metric, float('nan')):.3f}",
                  f"{result['baseline']['metrics'].get(metric, float('nan')):.3f}")  # fmt: skip
    console().print(table)
