"""Evaluate a candidate against the current champion on the same eval split, in one report.

    lifecycle evaluate --run MLFLOW_RUN_ID [--limit N]

Metrics per model: perplexity of the reference answers, and answer accuracy of greedy generations
(``exact_match`` after normalisation, and ``accuracy`` = the reference answer is contained in the
generation). The baseline is the model behind the ``champion`` alias, or the base model when there
is none yet. The report goes to the candidate's MLflow run (metrics + ``eval_report.json``) and to
Mongo ``evaluations`` (keyed by candidate, dataset and baseline, so re-running replaces it).
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lifecycle import registry
from lifecycle.settings import Settings
from lifecycle.store import EVALUATIONS, Store, now
from training.ingest import load_split
from training.records import Record

Report = Callable[[str], None]
_PUNCT = str.maketrans("", "", string.punctuation)


def normalise(text: str) -> str:
    """Lower case, no accents, no punctuation, single spaces."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"\s+", " ", text.lower().translate(_PUNCT)).strip()


def score(generations: list[str], references: list[str], answers: list[str]) -> dict[str, float]:
    n = max(len(generations), 1)
    exact = sum(normalise(g) == normalise(r) for g, r in zip(generations, references, strict=True))
    contains = sum(normalise(a) in normalise(g) for g, a in zip(generations, answers, strict=True))
    return {"exact_match": exact / n, "accuracy": contains / n}


@dataclass
class ModelUnderTest:
    label: str
    model: Any
    tokenizer: Any
    version: int = 0
    run_id: str = ""


def measure(m: ModelUnderTest, items: list[Record], max_new_tokens: int) -> tuple[dict[str, float], list[str]]:
    from training.generation import generate, perplexity

    prompts = [r.prompt_messages for r in items]
    gens = generate(m.model, m.tokenizer, prompts, max_new_tokens=max_new_tokens)
    answers = [str(r.meta.get("answer") or r.reference) for r in items]
    metrics = score(gens, [r.reference for r in items], answers)
    metrics["perplexity"] = perplexity(m.model, m.tokenizer, [r.messages for r in items])
    return metrics, gens


def load_pyfunc(uri: str) -> tuple[Any, Any]:
    """(model, tokenizer) behind a logged lifecycle MLflow model, loaded the same way users load it."""
    import mlflow

    wrapped = mlflow.pyfunc.load_model(uri).unwrap_python_model()
    return wrapped.model, wrapped.tokenizer


def baseline(settings: Settings, base_model: str) -> ModelUnderTest:
    """The champion when there is one, else the base model."""
    from training.generation import load_model

    mc = registry.client(settings.mlflow_tracking_uri)
    champ = registry.version_by_alias(mc, settings.model_name, registry.CHAMPION)
    if champ is not None:
        model, tok = load_pyfunc(f"models:/{settings.model_name}/{champ.version}")
        return ModelUnderTest("champion", model, tok, int(champ.version), champ.run_id or "")
    model, tok = load_model(base_model)
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
    cand_model, cand_tok = load_pyfunc(logged[0].model_uri)
    cand = ModelUnderTest("candidate", cand_model, cand_tok, run_id=mlflow_run_id)
    cand_metrics, cand_gens = measure(cand, items, max_new_tokens)
    report(f"candidate: {fmt(cand_metrics)}")
    base = baseline(settings, base_model)
    base_metrics, base_gens = measure(base, items, max_new_tokens)
    report(f"{base.label}{f' v{base.version}' if base.version else ''}: {fmt(base_metrics)}")

    result = {
        "dataset_id": dataset.name,
        "items": len(items),
        "candidate": {"run_id": mlflow_run_id, "model_uri": logged[0].model_uri, "metrics": cand_metrics},
        "baseline": {"kind": base.label, "version": base.version, "run_id": base.run_id, "metrics": base_metrics},
        "samples": [
            {
                "question": r.prompt_messages[-1]["content"],
                "reference": r.reference,
                "baseline": b,
                "candidate": c,
            }
            for r, b, c in list(zip(items, base_gens, cand_gens, strict=True))[:samples]
        ],
    }
    with mlflow.start_run(run_id=mlflow_run_id):
        mlflow.log_metrics({f"eval_{k}": v for k, v in cand_metrics.items()})
        mlflow.log_metrics({f"baseline_{k}": v for k, v in base_metrics.items()})
        mlflow.log_dict(result, "eval_report.json")
    doc_id = f"{mlflow_run_id}:{dataset.name}:{base.label}:{base.version}"
    store.db[EVALUATIONS].replace_one({"_id": doc_id}, {"_id": doc_id, **result, "created_at": now()}, upsert=True)
    return result


def fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.3f}" for k, v in metrics.items())
