"""What every command shares: settings loaded at the edge, the one-line failure, wide tables."""

from __future__ import annotations

from typing import Annotated, NoReturn

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
