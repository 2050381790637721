"""The lifecycle DAG's task bodies: thin wrappers over ``training.steps`` that pass ids, never data.

Each function is idempotent for the same inputs: ingest keys the dataset by its content hash,
fine-tuning keys its Mongo run by the DAG run (a retry after success returns the finished run),
evaluation replaces its report, registration is keyed by the MLflow run and promotion by version.
Settings come from the environment of the Airflow worker (``lifecycle up`` passes them through).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from lifecycle.settings import Settings, load_settings
from lifecycle.store import TRAINING_RUNS, Store

# Param name -> TrainConfig field, for the params the UI form exposes.
TRAIN_PARAMS = {
    "lora_r": "lora_r",
    "lora_alpha": "lora_alpha",
    "lora_dropout": "lora_dropout",
    "epochs": "epochs",
    "learning_rate": "learning_rate",
    "max_steps": "max_steps",
    "dtype": "dtype",
    "attention": "attention",
    "target_modules": "target_modules",
}


class PipelineError(RuntimeError):
    """A task cannot go on; the message says which input was wrong."""


def _settings(params: dict[str, Any]) -> Settings:
    """The worker's settings, with the base model and registered-model name of the run's params."""
    overrides = {k: params[k] for k in ("base_model", "model_name", "rollout_policy") if params.get(k)}
    return load_settings(**overrides)


def ingest(params: dict[str, Any], records: list[dict[str, Any]] | None = None) -> str:
    """Ingest the dataset named by the params (a JSONL path/URI) or inline records; returns its id."""
    from training import steps

    s = _settings(params)
    if params.get("base_dataset"):  # a new version of a dataset: its records, plus these if any
        lines = [json.dumps(r) for r in records or []]
        ds, _ = steps.extend(
            s,
            params["base_dataset"],
            lines,
            params.get("dataset_name", "dataset"),
            f"extend:{params['base_dataset']}" + (f"+{len(lines)} records" if lines else ""),
        )
        for r in ds.rejected:
            print(f"rejected {r.where}: {r.reason}")
        print(f"dataset {ds.id} (from {params['base_dataset']}): {ds.train} train, {ds.eval} eval")
        return ds.id
    eval_path = steps.check_source(s, params["eval_path"]) if params.get("eval_path") else None
    if records:
        source: Any = [json.dumps(r) for r in records]
        label = f"inline:{params.get('dataset_name', 'dataset')}"
    else:
        if not params.get("dataset_path"):
            raise PipelineError("params.dataset_path is empty and the run carries no records")
        source = steps.check_source(s, params["dataset_path"])
        label = source
    ds, _ = steps.ingest(s, source, label, name=params.get("dataset_name", "dataset"), eval_source=eval_path)
    for r in ds.rejected:
        print(f"rejected {r.where}: {r.reason}")
    print(f"dataset {ds.id}: {ds.train} train, {ds.eval} eval, {len(ds.rejected)} rejected")
    return ds.id


def validate(dataset_id: str, params: dict[str, Any]) -> str:
    """Fail fast, before any training, on a dataset or base model that cannot work."""
    from training.base_model import resolve_base_model
    from training.ingest import load_split
    from training.launch import check_base_model

    s = _settings(params)
    path = s.datasets_dir / dataset_id
    train = load_split(path, "train")
    if len(train) < int(params.get("global_batch_size", 16)):
        raise PipelineError(f"dataset {dataset_id} has {len(train)} training records, fewer than one batch")
    if not load_split(path, "eval"):
        raise PipelineError(f"dataset {dataset_id} has an empty eval split")
    check_base_model(resolve_base_model(s.base_model, s.models_dir))
    return dataset_id


def training_run_id(dag_run_id: str, dataset_id: str) -> str:
    return "tr-" + hashlib.sha256(f"{dag_run_id}:{dataset_id}".encode()).hexdigest()[:12]


def fine_tune(dataset_id: str, params: dict[str, Any], dag_run_id: str, context: Any = None) -> str:
    """Train with the run's backend: ``local`` (torchrun subprocess, its output is the task log) or
    ``kubernetes`` (a trainer pod, see ``plugins/k8s_training.py``). Returns the MLflow run id."""
    from training import steps
    from training.base_model import resolve_base_model
    from training.config import TrainConfig

    s = _settings(params)
    run_id = training_run_id(dag_run_id, dataset_id)
    backend = params.get("backend", "local")
    nodes = int(params.get("nodes", 1))
    launcher = None
    if backend == "kubernetes":
        from plugins.k8s_training import kubernetes_launcher

        launcher = kubernetes_launcher(s, run_id, context, nnodes=nodes)
    elif backend != "local":
        raise PipelineError(f"params.backend is {backend!r}; allowed: local, kubernetes")
    elif nodes > 1:
        raise PipelineError(f"params.nodes is {nodes}: several nodes need backend 'kubernetes'")
    with Store.connect(s) as store:
        done = store.get(TRAINING_RUNS, run_id)
    if done is not None and done.get("status") == "succeeded":
        print(f"training run {run_id} already succeeded: MLflow run {done['mlflow_run_id']}")
        return str(done["mlflow_run_id"])
    fields = {field: params[p] for p, field in TRAIN_PARAMS.items() if params.get(p) is not None}
    cfg = TrainConfig(
        base_model=resolve_base_model(s.base_model, s.models_dir),
        dataset=str(s.datasets_dir / dataset_id),
        out_dir=str(s.runs_dir / run_id),
        **fields,
    )
    # A retry after a failure reuses the run document, which then follows the new attempt.
    origin = {"dag_id": context["dag"].dag_id if context else "", "run_id": dag_run_id,
              "try_number": str(context["ti"].try_number) if context else ""}  # fmt: skip
    run = steps.train(s, cfg, int(params.get("nproc", 1)), print, run_id=run_id, launcher=launcher, origin=origin)
    return str(run.mlflow_run_id)


def evaluate(mlflow_run_id: str, params: dict[str, Any]) -> dict[str, Any]:
    from training import steps

    result = steps.evaluate(_settings(params), mlflow_run_id, int(params.get("eval_limit", 0)), print)
    return {
        "candidate": result["candidate"]["metrics"],
        "baseline": result["baseline"]["metrics"],
        "preview": result.get("preview"),
    }


def promote(mlflow_run_id: str, params: dict[str, Any]) -> dict[str, Any]:
    from training import steps

    res = steps.promote(_settings(params), mlflow_run_id, print, margin=float(params.get("promotion_margin", 0.0)),
                        confidence=float(params.get("promotion_confidence", 0.95)))  # fmt: skip
    return {
        "model_name": res.model_name,
        "version": res.version,
        "alias": res.alias,
        "reason": res.reason,
        "gate": res.gate,
        "rollout": res.rollout,
    }


def new_data_since_champion(params: dict[str, Any]) -> list[str]:
    """Ids of datasets ingested after the current champion's training run was created (all
    datasets when there is no champion yet), oldest first."""
    from lifecycle import registry
    from lifecycle.store import DATASETS

    s = _settings(params)
    mc = registry.client(s.mlflow_tracking_uri)
    champion = registry.version_by_alias(mc, s.model_name, registry.CHAMPION)
    query: dict[str, Any] = {}
    if champion is not None and champion.run_id:
        import datetime as dt

        started = mc.get_run(champion.run_id).info.start_time  # ms since epoch
        query = {"created_at": {"$gt": dt.datetime.fromtimestamp(started / 1000, dt.UTC)}}
    with Store.connect(s) as store:
        docs = store.db[DATASETS].find(query, {"_id": 1}).sort("created_at", 1)
        return [str(d["_id"]) for d in docs]


def merge_datasets(dataset_ids: list[str], params: dict[str, Any]) -> str:
    """One dataset holding the training and eval records of ``dataset_ids`` (ingested, so
    validated, deduplicated and keyed by content like any other); returns its id."""
    from training.ingest import load_split, record_lineage, write_dataset

    s = _settings(params)
    train, evaluation = [], []
    for ds_id in dataset_ids:
        train += load_split(s.datasets_dir / ds_id, "train")
        evaluation += load_split(s.datasets_dir / ds_id, "eval")
    unique_train: dict[str, Any] = {}
    for r in train:
        unique_train.setdefault(r.content_hash, r)
    unique_eval = {r.content_hash: r for r in evaluation if r.content_hash not in unique_train}
    train, evaluation = list(unique_train.values()), list(unique_eval.values())
    label = "merge:" + ",".join(dataset_ids)
    ds = write_dataset(s.datasets_dir, "retrain", label, train, evaluation, [], 0)
    with Store.connect(s) as store:
        record_lineage(store, ds, label, parents=dataset_ids)
    return ds.id
