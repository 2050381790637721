"""``lifecycle lineage`` and ``lifecycle forget``: where an answer came from, and deleting a training
record everywhere (``lifecycle/lineage.py``, ``lifecycle/forget.py``). Both talk to Mongo and MLflow
directly, as an operator of the stack; users of the gateway have ``GET /v1/responses/{id}/lineage``
and, with an admin key, ``DELETE /v1/records/{content_hash}``.

    lifecycle lineage RESPONSE_ID [-k 5] [-o json]
    lifecycle forget CONTENT_HASH --reason "erasure request 1142" [-o json]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli.common import Output, OutputOption, console, fail, print_json, settings

if TYPE_CHECKING:
    from lifecycle.settings import Settings
    from lifecycle.store import Store


def _run(output: Output, call: Callable[[Settings, Store], dict[str, Any]], errors: type[Exception]) -> dict[str, Any]:
    """``call`` against the stack's Mongo; its ``errors`` become the one-line failure. With ``-o json``
    the result is printed here and {} returned (nothing left to show)."""
    from lifecycle.store import Store

    cfg = settings()
    with Store.connect(cfg) as store:
        try:
            out = call(cfg, store)
        except errors as exc:
            fail(str(exc))
    if output == Output.json:
        print_json(out)
        return {}
    return out


def lineage(
    response_id: Annotated[
        str, typer.Argument(help="The answer's id (its `id`, or the x-lifecycle-response-id header).")
    ],
    k: Annotated[int, typer.Option("-k", min=1, max=50, help="Training records to show.")] = 5,
    output: OutputOption = Output.table,
) -> None:
    """Trace an answer: model version and digest, MLflow run, Airflow run, datasets, nearest training records."""
    from lifecycle.lineage import LineageError, resolve

    out = _run(output, lambda cfg, store: resolve(cfg, store, response_id, k=k), LineageError)
    if out:
        _show(out)


def _show(out: dict[str, Any]) -> None:
    con = console()
    m = out["model"]
    con.print(f"[bold]{out['response_id']}[/bold]  asked: {out['question'][:200]!r}")
    con.print(f"  model    {m['name']} v{m['version'] or '-'}  digest {m['digest'][:16] or '-'}"
              + ("  [green]verified[/green]" if m.get("digest_verified") else "")
              + (f"  [red]tainted by {m['tainted']}[/red]" if m.get("tainted") else ""))  # fmt: skip
    if out.get("mlflow_run"):
        con.print(f"  mlflow   run {out['mlflow_run']['run_id']} ({out['mlflow_run']['status']})")
        con.print(f"  training {out['training_run']['run_id']} on {out['training_run']['base_model']}")
    if out.get("airflow_run"):
        con.print(f"  airflow  {out['airflow_run']['dag_id']} / {out['airflow_run']['run_id']}")
    for ds in out.get("datasets", []):
        flag = "  [red]tainted[/red]" if ds.get("tainted") else ""
        con.print(f"  dataset  {ds['dataset_id']} {ds.get('name', '')} ({ds.get('train', '?')} train) "
                  f"from {ds.get('source', '?')}{flag}")  # fmt: skip
    if out.get("note"):
        con.print(f"  note     {out['note']}")
    for r in out.get("records", []):
        con.print(f"  {r['similarity']:.3f}  {r['dataset_id']} train.jsonl:{r['line']}  {r['content_hash'][:16]}  "
                  f"{r['question'][:80]!r} -> {r['answer'][:60]!r}")  # fmt: skip


def forget(
    content_hash: Annotated[str, typer.Argument(help="The record's content hash (`lifecycle lineage` shows it).")],
    reason: Annotated[str, typer.Option(help="Why it is deleted (kept with the deletion).")],
    output: OutputOption = Output.table,
) -> None:
    """Delete a training record everywhere; taint the datasets and models that hold or learned it."""
    import getpass

    from lifecycle.forget import ForgetError
    from lifecycle.forget import forget as do_forget

    actor = f"cli:{getpass.getuser()}"
    out = _run(output, lambda cfg, store: do_forget(cfg, store, content_hash, reason=reason, actor=actor), ForgetError)
    if not out:
        return
    typer.echo(f"{out['deletion_id']}: record {out['content_hash'][:16]} deleted from {len(out['datasets'])} dataset "
               f"version(s): {', '.join(out['datasets'])}")  # fmt: skip
    typer.echo(f"  tainted: {', '.join(out['model_versions']) or 'no model version'} ({len(out['runs'])} run(s))")
    for event in out["retrain_events"]:
        typer.echo(f"  retrain of a tainted champion started: event {event}")
    for rid in out["rolled_back"]:
        typer.echo(f"  rollout {rid} rolled back (tainted challenger)")
