"""``lifecycle rollout``: see and steer the live rollout of a challenger (lifecycle/rollout.py).

    lifecycle rollout status [--model NAME] [--version N]
    lifecycle rollout pause | resume | abort | promote [--model NAME]
    lifecycle rollout start --version N [--policy canary|shadow]

The gateway's controller decides on its own; these are the operator's hands on the same document
(each a compare-and-set: a decision made meanwhile is not overwritten, the command says so).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from cli.common import Output, OutputOption, console, fail, settings

app = typer.Typer(help="Live rollouts of challengers: status, pause, resume, abort, promote.", no_args_is_help=True)
Model = Annotated[str | None, typer.Option(help="Registered model (default LIFECYCLE_MODEL_NAME).")]
Version = Annotated[int | None, typer.Option(help="The challenger's version (default: the active rollout).")]


def _show(doc: dict[str, Any], as_json: bool) -> None:
    from lifecycle.rollout import view

    v = view(doc)
    if as_json:
        typer.echo(json.dumps(v, indent=2, default=str))
        return
    out = console()
    out.print(f"[bold]{v['id']}[/bold]  {v['policy']} vs champion v{v['champion']}: {v['state']}, "
              f"{v['stage']} at {v['share']:.0%}")  # fmt: skip
    if v["verdict"]:
        out.print(f"  now: {v['verdict']}")
    for arm in ("challenger", "champion"):
        e = v["evidence"].get(arm)
        if e:
            figures = ", ".join(f"{k} {x:g}" for k, x in e.items())
            out.print(f"  {arm}: {figures}")
    for d in v["decisions"]:
        out.print(f"  #{d['seq']} {d['at'][:19]} {d['type']} ({d['stage']} {d['share']:.0%}): {d['reason']}")


def _run(action: str, model: str | None, version: int | None, as_json: bool = False) -> None:
    from lifecycle import rollout
    from lifecycle.store import Store

    cfg = settings()
    try:
        with Store.connect(cfg) as store:
            if action == "status":
                doc = rollout.get(store, model or cfg.model_name, version)
            else:
                doc = rollout.control(cfg, store, model or cfg.model_name, action, version)
    except rollout.RolloutError as exc:
        fail(str(exc))
    _show(doc, as_json)


@app.command()
def status(model: Model = None, version: Version = None, output: OutputOption = Output.table,
           as_json: Annotated[bool, typer.Option("--json", help="The same as -o json.")] = False) -> None:  # fmt: skip
    """The rollout, its stage, the evidence so far and every decision."""
    _run("status", model, version, as_json or output == Output.json)


@app.command()
def pause(model: Model = None, version: Version = None) -> None:
    """Hold the current share: no step and no promotion (a rollback still happens) until resume."""
    _run("pause", model, version)


@app.command()
def resume(model: Model = None, version: Version = None) -> None:
    """Let the evidence decide again."""
    _run("resume", model, version)


@app.command()
def abort(model: Model = None, version: Version = None) -> None:
    """Roll the challenger back now: nobody is answered by it any more; champion unchanged."""
    _run("abort", model, version)


@app.command()
def promote(model: Model = None, version: Version = None) -> None:
    """Make the challenger champion now, whatever the evidence says."""
    _run("promote", model, version)


@app.command()
def start(
    version: Annotated[int, typer.Option(help="The registered version to roll out.")],
    policy: Annotated[str, typer.Option(help="canary or shadow.")] = "canary",
    model: Model = None,
) -> None:
    """Roll out a registered version against the champion (it becomes challenger)."""
    from lifecycle import registry, rollout
    from lifecycle.store import Store

    cfg = settings()
    name = model or cfg.model_name
    mc = registry.client(cfg.mlflow_tracking_uri)
    champion = registry.version_by_alias(mc, name, registry.CHAMPION)
    if champion is None:
        fail(f"{name} has no champion to roll out against; promote a version first")
    if int(champion.version) == version:
        fail(f"{name} version {version} is the champion already")
    try:
        mc.set_registered_model_alias(name, registry.CHALLENGER, str(version))
        with Store.connect(cfg) as store:
            doc = rollout.start(
                cfg, store, name, version, int(champion.version), policy, reason="started by an operator"
            )
    except rollout.RolloutError as exc:
        fail(str(exc))
    _show(doc, False)
