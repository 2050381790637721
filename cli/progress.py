"""Progress of long work. On a terminal (stderr is a TTY): a progress bar with ETA per phase —
training (step, loss), evaluation (items answered by each model), a followed DAG run (tasks done) —
with every other line printed above the bars. Piped or redirected: the same lines as plain text on
stderr, no bar and no escape codes, so logs and ``-o json`` on stdout stay clean."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console

#: ``step 12/200 loss 1.2345 …`` (trainer), ``answering candidate: 16/40 items`` (evaluation),
#: ``tasks 3/8 …`` (a followed DAG run), ``pulling 1/3 …`` (model pull: its phases).
LINE = re.compile(
    r"^(?:(?P<step>step)|answering (?P<model>\S+):|(?P<tasks>tasks)|(?P<verb>[a-z]+)) (?P<done>\d+)/(?P<total>\d+)"
    r"(?: (?:items|MB))?(?: loss (?P<loss>\S+))?(?P<rest>.*)$"
)


def is_terminal() -> bool:
    return Console(stderr=True).is_terminal


def _plain(line: str) -> None:
    typer.echo(f"  {line}", err=True)


@contextmanager
def tracking() -> Iterator[Callable[[str], None]]:
    """A ``report(line)`` for steps.* calls: bars on a terminal, plain stderr lines otherwise."""
    if not is_terminal():
        yield _plain
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[info]}"), TextColumn("ETA"), TimeRemainingColumn())  # fmt: skip
    with Progress(*columns, console=Console(stderr=True), transient=False) as bars:
        phases: dict[str, Any] = {}

        def report(line: str) -> None:
            m = LINE.match(line)
            if not m:
                bars.console.print(f"  {line}", markup=False, highlight=False)
                return
            phase = ("training" if m["step"] else f"answering {m['model']}" if m["model"]
                     else "DAG run tasks" if m["tasks"] else str(m["verb"]))  # fmt: skip
            done, total = int(m["done"]), int(m["total"])
            info = f"loss {m['loss']}" if m["loss"] else (m["rest"] or "").strip()[:40]
            if phase not in phases:
                phases[phase] = bars.add_task(phase, total=total, info=info)
            bars.update(phases[phase], completed=done, total=total, info=info)

        yield report
