"""What every command shares: settings loaded at the edge, the one-line failure, wide tables, and
``-o table|json`` for every command that lists or reports."""

from __future__ import annotations

import contextlib
import json
import sys
from enum import StrEnum
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

from lifecycle.settings import Settings, SettingsError, load_settings

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


def report(message: str) -> None:
    """Progress of long work, indented under the command's own lines."""
    typer.echo(f"  {message}")


def console() -> Console:
    return Console(width=max(Console().width, 110))


class Output(StrEnum):
    table = "table"
    text = "text"  # the same as table
    json = "json"


OutputOption = Annotated[
    Output, typer.Option("--output", "-o", case_sensitive=False, help="table (for people) or json (for scripts).")
]


def results_only() -> contextlib.AbstractContextManager[Any]:
    """Around the work of a command: anything the libraries print (MLflow's "View run …" lines) goes to
    stderr, so stdout holds only the command's result (``-o json`` parses)."""
    return contextlib.redirect_stdout(sys.stderr)


def print_json(data: Any) -> None:
    """The result as JSON on stdout (progress and warnings go to stderr)."""
    typer.echo(json.dumps(data, indent=2, default=str))


def print_rows(title: str, rows: list[dict[str, Any]], output: Output, columns: list[str] | None = None) -> None:
    """``rows`` as a table (``columns`` of them) or the whole rows as a JSON list."""
    if output == Output.json:
        print_json(rows)
        return
    from rich.table import Table

    cols = columns or (list(rows[0]) if rows else [])
    table = Table(title=title)
    for col in cols:  # ids are copied from here: whole, on one line
        table.add_column(col.replace("_", " "), no_wrap=col not in ("parents", "error"), overflow="fold")
    for row in rows:
        table.add_row(*("" if row.get(c) is None else str(row.get(c)) for c in cols))
    out = Console() if Console().is_terminal else Console(width=200)  # piped: no cut at 80 columns
    out.print(table)
    if not rows:
        typer.echo("(none)")
