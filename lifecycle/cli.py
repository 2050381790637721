"""The ``lifecycle`` command line.

    lifecycle up | down | status      the local stack (Kafka, MongoDB, MLflow, Airflow)
    lifecycle models pull             the base model into the model cache, offline
    lifecycle demo                    set everything up and show it working

Every command exits non-zero with a one-line reason on failure. This module is the one edge that
reaches into ``training``/``serving``, and only inside commands (lazy imports), so ``lifecycle``
itself never depends on torch.
"""

from __future__ import annotations

import sys
import time
from typing import Annotated, NoReturn

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


@app.command()
def demo() -> None:
    """Set everything up and show it working: stack up, base model pulled, status printed."""
    up(None)
    models_pull(False)
    try:
        status()
    except typer.Exit as exc:
        if exc.exit_code:
            raise


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
