"""The ``lifecycle`` command line: every command group of ``cli/`` assembled into one Typer app.

    lifecycle up | down | status      the local stack (Kafka, MongoDB, MLflow, Airflow)
    lifecycle models pull             the base model into the model cache, offline
    lifecycle ingest | train | evaluate | promote | pipeline     the lifecycle without Airflow
    lifecycle serve | query           the gateway and its gRPC workers
    lifecycle rollout status | pause | resume | abort | promote | start     live rollouts
    lifecycle lineage | forget        where an answer came from; delete a training record everywhere
    lifecycle runs | datasets | models list       what the platform holds (-o json for scripts)
    lifecycle trigger [DAG] | logs RUN            an Airflow run from a terminal; a training run's log
    lifecycle demo                    set everything up and show it working

Commands that list or report take ``-o table|json``; long work shows progress bars on a terminal only.

Every command exits non-zero with a one-line reason on failure. Commands import what they run
(training, serving, the stack) inside themselves, so ``lifecycle --help`` starts fast.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from cli import demo, inventory, lineage, rollout, serve, stack, train

app = typer.Typer(
    help="llm-lifecycle: fine-tune, evaluate, promote and serve an LLM on Airflow, MLflow and Kafka.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="Base models in the model cache.", no_args_is_help=True)
#: Commands that pass unknown flags on (to the trainer).
_PASS_ON = {"allow_extra_args": True, "ignore_unknown_options": True}

for command in (stack.up, stack.down, stack.status, train.ingest):
    app.command()(command)
app.command(context_settings=_PASS_ON, epilog=train.trainer_flags())(train.train)
app.command()(train.evaluate)
app.command()(train.promote)
app.command(context_settings=_PASS_ON)(train.pipeline)
app.command()(demo.demo)
app.command()(serve.serve)
app.command()(serve.query)
app.command()(lineage.lineage)
app.command()(lineage.forget)
models_app.command("pull")(stack.models_pull)
models_app.command("list")(inventory.models_list)
app.add_typer(models_app, name="models")
app.add_typer(inventory.runs_app, name="runs")
app.add_typer(inventory.datasets_app, name="datasets")
app.command()(inventory.trigger)
app.command()(inventory.logs)
app.add_typer(rollout.app, name="rollout")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"lifecycle {version('llm-lifecycle')}")
        raise typer.Exit()


@app.callback()
def _root(
    _version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """llm-lifecycle: fine-tune, evaluate, promote and serve an LLM on Airflow, MLflow and Kafka."""


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
