"""``lifecycle up | down | status`` (the local stack) and ``lifecycle models pull``."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from cli.common import Output, OutputOption, ServiceNames, console, fail, print_json, report, settings


def up(names: ServiceNames = None) -> None:
    """Start the local stack (idempotent: running services are left alone)."""
    from lifecycle.stack import manager
    from lifecycle.stack.base import StackError

    cfg = settings()
    t0 = time.monotonic()
    try:
        started = manager.up(cfg, names, report=report)
    except StackError as exc:
        fail(str(exc))
    typer.echo(f"stack up in {time.monotonic() - t0:.1f}s ({len(started)} started)")


def down(names: ServiceNames = None) -> None:
    """Stop the local stack; data stays under LIFECYCLE_HOME."""
    from lifecycle.stack import manager
    from lifecycle.stack.base import StackError

    try:
        stopped = manager.down(settings(), names, report=report)
    except StackError as exc:
        fail(str(exc))
    typer.echo(f"stopped {len(stopped)} service(s)")


def _human_bytes(n: int) -> str:
    return f"{n / 2**20:.0f} MiB" if n else "-"


def status(output: OutputOption = Output.table) -> None:
    """Show each service: state, address, version and resident memory (exit 3 when one is not up)."""
    from dataclasses import asdict

    from rich.table import Table

    from lifecycle.stack import manager
    from lifecycle.stack.airflow import admin_credentials

    cfg = settings()
    rows = manager.status(cfg)
    if output == Output.json:
        print_json([asdict(r) for r in rows])
        if any(r.state != "up" for r in rows):
            raise typer.Exit(3)
        return
    table = Table(title=f"llm-lifecycle local stack ({cfg.home})")
    for col in ("service", "state", "address", "version", "RSS", "pid"):
        table.add_column(col)
    colour = {"up": "green", "unhealthy": "yellow", "down": "red"}
    for r in rows:
        state = f"[{colour[r.state]}]{r.state}[/]"
        table.add_row(r.name, state, r.address, r.version, _human_bytes(r.rss), str(r.pid or "-"))
    out = console()
    out.print(table)
    out.print(f"total RSS: {_human_bytes(sum(r.rss for r in rows))}    logs: {cfg.logs_dir}")
    creds = admin_credentials(cfg)
    if creds:
        out.print(f"Airflow UI: http://{cfg.host}:{cfg.airflow_port}  user: {creds[0]}  password: {creds[1]}")
    if any(r.state != "up" for r in rows):
        raise typer.Exit(3)  # like `systemctl status`: scripts can tell a degraded stack


def models_pull(
    source: Annotated[
        str,
        typer.Argument(help="A local Hugging Face folder, a .gguf file or a hub id; default: SmolLM2-135M-Instruct."),
    ] = "",
    name: Annotated[str, typer.Option(help="Name in the model cache (use it as LIFECYCLE_BASE_MODEL).")] = "",
    force: Annotated[bool, typer.Option(help="Convert or copy again even if cached.")] = False,
) -> None:
    """Register a base model in the model cache: the default one offline from its GGUF package, or yours."""
    cfg = settings()
    from cli.progress import tracking
    from training.base_model import ModelError, pull_model

    t0 = time.monotonic()
    try:
        with tracking() as progress:  # a bar of the pull's phases on a terminal
            pulled = pull_model(source or cfg.base_model, cfg.models_dir, name=name, force=force, report=progress)
            progress("pulling 3/3 in the model cache")
    except ModelError as exc:
        fail(str(exc))
    elapsed = time.monotonic() - t0
    typer.echo(f"{pulled.path.name.replace('--', '/')}: {pulled.path} ({pulled.parameters / 1e6:.0f}M parameters, "
               f"{elapsed:.1f}s)")  # fmt: skip
    typer.echo(f"  check: {pulled.check_text!r}")
