"""Evaluate a candidate against the current champion on the same eval split, in one report.

    lifecycle evaluate --run MLFLOW_RUN_ID [--limit N]

Both models answer the same items greedily and every item is scored (training/scoring.py):
``accuracy`` where the item has a short ``answer`` (the generation contains it), token-F1 and ROUGE-L
against the reference for every item (so open-ended data gets a meaningful score), and the loss of
the reference answer (perplexity overall). The baseline is the model behind the ``champion`` alias,
or the base model when there is none yet. Per-item scores of both models are kept, so the gate
(training/gate.py) compares them pairwise; the report goes to the candidate's MLflow run (metrics,
``eval_report.json``, the per-item table ``eval_items.json``) and to Mongo ``evaluations`` (keyed by
candidate, dataset and baseline, so re-running replaces it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lifecycle import registry
from lifecycle.settings import Settings
from lifecycle.store import EVALUATIONS, Store, now
from training.gate import paired_gate
from training.ingest import load_split
from training.records import Record
from training.scoring import ItemScore, aggregate, gate_metric, score_item

Report = Callable[[str], None]


@dataclass
class ModelUnderTest:
    label: str
    model: Any
    tokenizer: Any
    version: int = 0
    run_id: str = ""


@dataclass
class Measured:
    metrics: dict[str, float]
    generations: list[str]
    items: list[ItemScore]
    losses: list[float]  # mean loss per reference token, per item


def measure(m: ModelUnderTest, items: list[Record], max_new_tokens: int, report: Report | None = None) -> Measured:
    """Generate and score every item; ``report`` gets ``"answering <label>: done/total items"`` lines."""
    from training.generation import generate, perplexity_of, reference_losses

    progress = (lambda done, total: report(f"answering {m.label}: {done}/{total} items")) if report else None
    prompts = [r.prompt_messages for r in items]
    gens = generate(m.model, m.tokenizer, prompts, max_new_tokens=max_new_tokens, progress=progress)
    scores = [score_item(g, r.reference, _answer(r)) for g, r in zip(gens, items, strict=True)]
    losses = reference_losses(m.model, m.tokenizer, [r.messages for r in items])
    metrics = aggregate(scores)
    metrics["perplexity"] = perplexity_of(losses)
    return Measured(metrics, gens, scores, [t / max(c, 1) for t, c in losses])


def _answer(r: Record) -> str | None:
    answer = r.meta.get("answer")
    return str(answer) if answer not in (None, "") else None


def load_verified(
    settings: Settings, store: Store, source: str, run_id: str, what: str, legacy: dict[str, str] | None = None
) -> tuple[Any, Any]:
    """(model, tokenizer) of a logged lifecycle model: its adapter downloaded and checked file by file
    against the record made at training (lifecycle/digests.py, as the workers do), on the base model
    named in that record, in the settings' device and dtype (``auto``: runtime/hardware.py). No code
    from the artifact store runs (MLflow's models-from-code would execute the logged ``python_model``)."""
    import shutil
    import tempfile

    from lifecycle import digests
    from training.generation import load_model

    settings.serving_dir.mkdir(parents=True, exist_ok=True)
    dest = Path(tempfile.mkdtemp(prefix="eval-", dir=settings.serving_dir))
    try:
        adapter, rec = digests.fetch(settings, store, source, run_id, dest, what, legacy=legacy)
        return load_model(digests.local_base(settings, rec.base_model), adapter, dtype=settings.dtype,
                          device=settings.device)  # fmt: skip
    finally:
        shutil.rmtree(dest, ignore_errors=True)


def baseline(settings: Settings, store: Store, base_model: str) -> ModelUnderTest:
    """The champion when there is one, else the base model."""
    from training.generation import load_model

    mc = registry.client(settings.mlflow_tracking_uri)
    champ = registry.version_by_alias(mc, settings.model_name, registry.CHAMPION)
    if champ is not None:
        what = f"{settings.model_name} v{champ.version}"
        from lifecycle.digests import legacy_tags

        model, tok = load_verified(settings, store, champ.source, str(champ.run_id), what, legacy_tags(champ.tags))
        return ModelUnderTest("champion", model, tok, int(champ.version), champ.run_id or "")
    model, tok = load_model(base_model, dtype=settings.dtype, device=settings.device)
    return ModelUnderTest("base", model, tok)


def evaluate(
    settings: Settings, store: Store, mlflow_run_id: str, *, limit: int = 0, max_new_tokens: int = 32,
    samples: int = 3, report: Report = print,
) -> dict[str, Any]:  # fmt: skip
    import mlflow

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mc = registry.client(settings.mlflow_tracking_uri)
    run = mc.get_run(mlflow_run_id)
    base_model = run.data.params["base_model"]
    dataset = Path(run.data.params["dataset"])
    items = load_split(dataset, "eval")
    if limit:
        items = items[:limit]
    if not items:
        raise ValueError(f"dataset {dataset.name} has an empty eval split")
    logged = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{mlflow_run_id}'",
        output_format="list",
    )
    if not logged:
        raise ValueError(f"MLflow run {mlflow_run_id} has no logged model (did training finish?)")
    report(f"evaluating candidate of run {mlflow_run_id} on {len(items)} eval items")
    cand_model, cand_tok = load_verified(settings, store, logged[0].model_uri, mlflow_run_id, "the candidate")
    cand = ModelUnderTest("candidate", cand_model, cand_tok, run_id=mlflow_run_id)
    got = measure(cand, items, max_new_tokens, report)
    cand_metrics = got.metrics
    report(f"candidate: {fmt(cand_metrics)}")
    base = baseline(settings, store, base_model)
    ref = measure(base, items, max_new_tokens, report)
    base_metrics = ref.metrics
    report(f"{base.label}{f' v{base.version}' if base.version else ''}: {fmt(base_metrics)}")
    metric, binary = gate_metric(got.items)
    preview = paired_gate([i.score for i in got.items], [i.score for i in ref.items], binary=binary, metric=metric)
    report(f"paired comparison ({preview.test}): {preview.reason.split(': ', 1)[1]}")

    result = {
        "dataset_id": dataset.name,
        "items": len(items),
        "candidate": {"run_id": mlflow_run_id, "model_uri": logged[0].model_uri, "metrics": cand_metrics},
        "baseline": {"kind": base.label, "version": base.version, "run_id": base.run_id, "metrics": base_metrics},
        "gate_metric": metric,
        "binary": binary,
        # Per-item scores, same order for both: what the gate compares pairwise.
        "scores": {"candidate": [i.score for i in got.items], "baseline": [i.score for i in ref.items]},
        "preview": preview.to_dict(),
        "samples": [
            {
                "question": r.prompt_messages[-1]["content"],
                "reference": r.reference,
                "baseline": b,
                "candidate": c,
            }
            for r, b, c in list(zip(items, ref.generations, got.generations, strict=True))[:samples]
        ],
    }
    with mlflow.start_run(run_id=mlflow_run_id):
        mlflow.log_metrics({f"eval_{k}": v for k, v in cand_metrics.items()})
        mlflow.log_metrics({f"baseline_{k}": v for k, v in base_metrics.items()})
        mlflow.log_dict(result, "eval_report.json")
        mlflow.log_table(item_table(items, got, ref), artifact_file="eval_items.json")
        _log_comparison(result)
    doc_id = f"{mlflow_run_id}:{dataset.name}:{base.label}:{base.version}"
    store.db[EVALUATIONS].replace_one({"_id": doc_id}, {"_id": doc_id, **result, "created_at": now()}, upsert=True)
    return result


def _log_comparison(result: dict[str, Any]) -> None:
    """The comparison figure of the active run (a drawing failure costs the picture only)."""
    import mlflow

    from training.figures import close, evaluation_comparison

    try:
        fig = evaluation_comparison(result)
        mlflow.log_figure(fig, "figures/evaluation.png")
        close(fig)
    except Exception as exc:  # noqa: BLE001 - a picture is never worth a lost evaluation
        print(f"warning: evaluation figure not drawn: {type(exc).__name__}: {exc}")


def item_table(items: list[Record], cand: Measured, base: Measured) -> dict[str, list[Any]]:
    """One row per eval item: question, reference, both generations and every score of both."""
    table: dict[str, list[Any]] = {
        "question": [r.prompt_messages[-1]["content"] for r in items],
        "reference": [r.reference for r in items],
        "answer": [_answer(r) or "" for r in items],
    }
    for label, m in (("candidate", cand), ("baseline", base)):
        table[f"{label}_text"] = m.generations
        table[f"{label}_score"] = [i.score for i in m.items]
        table[f"{label}_token_f1"] = [i.token_f1 for i in m.items]
        table[f"{label}_rouge_l"] = [i.rouge_l for i in m.items]
        table[f"{label}_loss"] = m.losses
    return table


def fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.3f}" for k, v in metrics.items())
