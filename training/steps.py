"""The lifecycle's steps as one call each, with their bookkeeping (tokenizer, Mongo, id resolution):
ingest -> train -> evaluate -> promote. The glue that both front ends share: the ``lifecycle`` CLI
(``cli/``) and the Airflow tasks (``plugins/pipeline.py``) call these, and translate ``StepError``
and the steps' own errors into an exit code or a failed task."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from lifecycle.settings import Settings
from lifecycle.store import TRAINING_RUNS, Store
from training.config import TrainConfig
from training.ingest import Dataset

Report = Callable[[str], None]


class StepError(ValueError):
    """An input of a step names nothing usable (dataset, run id); the message says which and why."""


def dataset_dir(settings: Settings, dataset: str) -> Path:
    """A dataset given as a folder (with train.jsonl) or as an id under the datasets dir."""
    path = Path(dataset).expanduser()
    if (path / "train.jsonl").exists():
        return path
    by_id = settings.datasets_dir / dataset
    if (by_id / "train.jsonl").exists():
        return by_id
    raise StepError(f"no dataset {dataset!r} (neither a folder with train.jsonl nor an id in {settings.datasets_dir})")


def check_source(settings: Settings, uri: str | Path) -> str:
    """A training-data location the settings allow, as a path or URI string. Local paths (plain or
    ``file://``) may not point into the state dir (other datasets' eval splits, logs, run folders) and,
    when ``LIFECYCLE_DATA_ROOTS`` is set, must lie under one of its folders; object-store URIs
    (``s3://``, ``gs://``, …) are read with their own credentials."""
    from urllib.parse import urlsplit

    text = str(uri)
    parts = urlsplit(text)
    if parts.scheme not in ("", "file") and len(parts.scheme) > 1:  # a Windows drive letter is not a scheme
        return text
    path = Path(parts.path if parts.scheme else text).expanduser().resolve()
    home = Path(settings.home).expanduser().resolve()
    if path == home or home in path.parents:
        raise StepError(f"{text}: training data may not be read from the state dir {home}")
    roots = [Path(r).expanduser().resolve() for r in settings.data_roots]
    if roots and not any(path == r or r in path.parents for r in roots):
        raise StepError(f"{text}: outside LIFECYCLE_DATA_ROOTS ({', '.join(map(str, roots))})")
    return str(path)


def ingest(settings: Settings, source: str | Path | Iterable[str], label: str, **options: Any) -> tuple[Dataset, bool]:
    """Validate, deduplicate and split ``source`` into a dataset under the datasets dir, tokens counted
    with the base model's tokenizer, and record its lineage. ``options`` go to ``training.ingest.ingest``
    (name, eval_source, eval_fraction, seed, max_seq_len). Returns the dataset and whether it is new."""
    from training.base_model import load_tokenizer
    from training.ingest import ingest as do_ingest
    from training.ingest import record_lineage

    if isinstance(source, str | Path):
        source = check_source(settings, source)
    if options.get("eval_source") is not None:
        options["eval_source"] = check_source(settings, options["eval_source"])
    tokenizer = load_tokenizer(settings.base_model, settings.models_dir)
    ds = do_ingest(source, settings.datasets_dir, tokenizer=tokenizer, source_label=label,
                   max_bytes=settings.max_dataset_bytes, **options)  # fmt: skip
    with Store.connect(settings) as store:
        return ds, record_lineage(store, ds, label)


def extend(settings: Settings, base_id: str, records: list[str], name: str, label: str = "") -> tuple[Dataset, bool]:
    """A new dataset version from ``base_id`` plus ``records`` (JSON lines; see ``training.ingest.extend``),
    its lineage naming the base as parent. Returns the dataset and whether it is new."""
    from training.base_model import load_tokenizer
    from training.ingest import IngestError, record_lineage
    from training.ingest import extend as do_extend

    tokenizer = load_tokenizer(settings.base_model, settings.models_dir)
    try:
        ds = do_extend(settings.datasets_dir, base_id, records, name=name, tokenizer=tokenizer, source_label=label)
    except IngestError as exc:
        raise StepError(str(exc)) from None
    with Store.connect(settings) as store:
        return ds, record_lineage(store, ds, label or f"extend:{base_id}", parents=[base_id])


def train(settings: Settings, cfg: TrainConfig, nproc: int = 1, report: Report = print, **options: Any) -> Any:
    """A tracked training run of ``cfg`` (``training.launch.run_training``; ``options``: run_id, launcher)."""
    from training.launch import run_training

    with Store.connect(settings) as store:
        return run_training(settings, cfg, nproc=nproc, store=store, report=report, **options)


def mlflow_run_id(store: Store, run: str) -> str:
    """A training run id (``tr-…``, the Mongo ``training_runs`` id) resolved to its MLflow run id; any
    other id is taken as an MLflow run id."""
    if not run.startswith("tr-"):
        return run
    doc = store.get(TRAINING_RUNS, run)
    if doc is None:
        raise StepError(
            f"--run {run}: no such training run in Mongo `training_runs` (the id `lifecycle train` printed)"
        )
    if not doc.get("mlflow_run_id"):
        raise StepError(f"--run {run}: the training run has no MLflow run (status {doc.get('status')})")
    return str(doc["mlflow_run_id"])


def evaluate(settings: Settings, run: str, limit: int = 0, report: Report = print) -> dict[str, Any]:
    """Evaluate a candidate (training or MLflow run id) against the champion or the base model."""
    from training.evaluate import evaluate as do_evaluate

    with Store.connect(settings) as store:
        return do_evaluate(settings, store, mlflow_run_id(store, run), limit=limit, report=report)


def promote(settings: Settings, run: str, report: Report = print, **gate: float) -> Any:
    """Register the candidate and pass it through the gate (``gate``: margin, tolerance)."""
    from training.promote import promote as do_promote

    with Store.connect(settings) as store:
        return do_promote(settings, store, mlflow_run_id(store, run), report=report, **gate)


def rollback(settings: Settings, report: Report = print) -> Any:
    """Move the champion back to the version before it."""
    from training.promote import rollback as do_rollback

    with Store.connect(settings) as store:
        return do_rollback(settings, store, report=report)
