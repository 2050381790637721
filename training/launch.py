"""Launch a tracked fine-tuning run: MLflow run + Mongo ``training_runs`` around a torchrun job.

The launcher owns the bookkeeping, so a training process that crashes (or is killed) is still
recorded: Mongo status goes queued -> running -> succeeded | failed (with the error), and the MLflow
run ends FINISHED or FAILED. Rank 0 of the job logs per-step metrics into the same MLflow run.
On success the adapter is logged as an MLflow model that loads base + adapter in one call.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import sys
import uuid
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lifecycle import lineage, registry
from lifecycle.settings import Settings
from lifecycle.store import TRAINING_RUNS, Store, now
from training.config import TrainConfig

Report = Callable[[str], None]
#: Runs the training job for a resolved config: (cfg, nproc, out_dir, report); raises TrainingError.
Launcher = Callable[[TrainConfig, int, Path, Report], None]
MODEL_CODE = Path(__file__).with_name("mlflow_model.py")


class TrainingError(RuntimeError):
    """The run failed; the message carries the error and where its log is."""


@dataclass
class TrainingRun:
    run_id: str
    mlflow_run_id: str
    out_dir: Path
    dataset_id: str
    metrics: dict[str, float]
    model_uri: str


def check_base_model(name: str) -> None:
    """Fail before any work when the base model cannot be found (local folder or cached hub id)."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise TrainingError(f"base model folder {path} has no config.json")
        return
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as exc:
        raise TrainingError(
            f"base model {name!r} is neither a local folder nor a model that can be loaded: {str(exc).splitlines()[0]}"
        ) from None


def git_commit() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, check=False
    )
    return done.stdout.strip() if done.returncode == 0 else "unknown"


def _flat_params(cfg: TrainConfig) -> dict[str, str]:
    skip = {"mlflow_run_id", "tracking_uri", "resume"}
    return {k: ",".join(v) if isinstance(v, list) else str(v) for k, v in cfg.to_dict().items() if k not in skip}


def run_training(
    settings: Settings,
    cfg: TrainConfig,
    *,
    nproc: int = 1,
    store: Store,
    report: Report = print,
    run_id: str | None = None,
    launcher: Launcher | None = None,
    origin: dict[str, str] | None = None,
) -> TrainingRun:
    """Train ``cfg`` under ``nproc`` processes, tracked in MLflow and Mongo. Raises ``TrainingError``.
    ``origin``: the Airflow DAG and run that asked for it (``dag_id``, ``run_id``), kept as run tags for
    lineage. The dataset version's similarity index (``lifecycle/lineage.py``) is built here, once.
    Run again under the same ``run_id`` after a failed or killed attempt, it resumes from the latest
    checkpoint in the run's folder; one trainer at a time writes that folder."""
    check_base_model(cfg.base_model)
    dataset = Path(cfg.dataset)
    if not (dataset / "train.jsonl").exists():
        raise TrainingError(f"dataset folder {dataset} has no train.jsonl (run `lifecycle ingest` first)")
    run_id = run_id or f"tr-{uuid.uuid4().hex[:12]}"
    out_dir = Path(cfg.out_dir or settings.runs_dir / run_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    with writing(out_dir):
        return _tracked(settings, cfg, nproc, store, report, run_id, out_dir, launcher, origin)


def _tracked(
    settings: Settings, cfg: TrainConfig, nproc: int, store: Store, report: Report, run_id: str, out_dir: Path,
    launcher: Launcher | None, origin: dict[str, str] | None,
) -> TrainingRun:  # fmt: skip
    import mlflow

    dataset = Path(cfg.dataset)
    dataset_id = dataset.name
    earlier = store.get(TRAINING_RUNS, run_id)
    store.insert_once(
        TRAINING_RUNS,
        {"_id": run_id, "status": "queued", "dataset_id": dataset_id, "base_model": cfg.base_model,
         "nproc": nproc, "out_dir": str(out_dir), "airflow": origin or None, "created_at": now(), "updated_at": now()},
    )  # fmt: skip

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    experiment = mlflow.set_experiment(settings.model_name)
    mc = registry.client(settings.mlflow_tracking_uri)
    tags = {"lifecycle.run_id": run_id, "dataset_id": dataset_id, "mlflow.source.git.commit": git_commit(),
            "base_model": cfg.base_model, "nproc": str(nproc)}  # fmt: skip
    if origin:
        tags.update(airflow_tags(settings, origin))
    mlrun = mc.create_run(experiment.experiment_id, tags=tags, run_name=run_id)
    mlflow_run_id = mlrun.info.run_id
    if earlier is not None and earlier.get("status") != "succeeded":
        # Another attempt of this run (an Airflow retry, a re-run after the launcher died): it continues
        # from the folder's latest checkpoint, and an attempt whose launcher died is ended FAILED.
        cfg.resume = True
        _supersede(mc, str(earlier.get("mlflow_run_id") or ""), mlflow_run_id, report)
    try:
        log_dataset_inputs(mc, mlflow_run_id, dataset, store)
    except Exception as exc:  # noqa: BLE001 - the inputs panel is worth a warning, not a lost training run
        report(f"warning: dataset inputs not logged to MLflow: {type(exc).__name__}: {str(exc)[:300]}")
    cfg.out_dir, cfg.mlflow_run_id, cfg.tracking_uri = str(out_dir), mlflow_run_id, settings.mlflow_tracking_uri
    try:
        for key, value in _flat_params(cfg).items():
            mc.log_param(mlflow_run_id, key, value[:6000])
        mc.log_dict(mlflow_run_id, cfg.to_dict(), "config.json")
        store.update(
            TRAINING_RUNS, run_id, {"status": "running", "mlflow_run_id": mlflow_run_id, "config": cfg.to_dict()}
        )
        try:
            lineage.ensure_index(store, dataset_id, dataset)
        except Exception as exc:  # noqa: BLE001 - provenance is worth a warning, not a lost training run
            report(f"warning: no lineage index for {dataset_id}: {type(exc).__name__}: {str(exc)[:300]}")
        (launcher or launch_local)(cfg, nproc, out_dir, report)
        result = json.loads((out_dir / "result.json").read_text())
        metrics = {k: float(result[k]) for k in ("final_loss", "tokens_per_sec", "train_seconds", "steps")}
        if result.get("dtype"):  # what `auto` became on the trainer's device, and why
            mc.set_tag(mlflow_run_id, "lifecycle.dtype", str(result["dtype"]))
            mc.set_tag(mlflow_run_id, "lifecycle.dtype_reason", str(result.get("dtype_reason", ""))[:5000])
        model_uri = _log_model(mlflow_run_id, cfg, out_dir, metrics, store)
    except BaseException as exc:
        error = str(exc) if isinstance(exc, TrainingError) else f"{type(exc).__name__}: {exc}"
        store.update(TRAINING_RUNS, run_id, {"status": "failed", "error": error[-4000:], "finished_at": now()})
        mc.set_terminated(mlflow_run_id, status="FAILED")
        if isinstance(exc, TrainingError):
            raise
        raise TrainingError(error) from exc
    mc.set_terminated(mlflow_run_id, status="FINISHED")
    store.update(
        TRAINING_RUNS, run_id, {"status": "succeeded", "metrics": metrics, "model_uri": model_uri, "finished_at": now()}
    )
    return TrainingRun(run_id, mlflow_run_id, out_dir, dataset_id, metrics, model_uri)


_LOCKS: dict[Path, int] = {}  # output folder -> the descriptor holding its lock (passed to the trainer)


@contextmanager
def writing(out_dir: Path) -> Iterator[None]:
    """Hold ``out_dir`` for one trainer: an exclusive ``flock`` on ``.trainer.lock`` inside it, inherited
    by the training processes, so that a second attempt cannot write the same folder while the first
    one's trainer still runs (even one whose launcher was killed: the kernel drops the lock only when
    every process holding it is gone)."""
    path = out_dir / ".trainer.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = path.read_text().strip() or "?"
        os.close(fd)
        raise TrainingError(f"{out_dir} is being written by another trainer (pid {holder}); "
                            "wait for it to end or stop it, then run again") from None  # fmt: skip
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _LOCKS[out_dir.resolve()] = fd
    try:
        yield
    finally:
        _LOCKS.pop(out_dir.resolve(), None)
        os.close(fd)


def _supersede(mc: Any, earlier: str, now_id: str, report: Report) -> None:
    """End an earlier attempt's MLflow run that is still RUNNING (its launcher died) as FAILED."""
    if not earlier:
        return
    try:
        if mc.get_run(earlier).info.status == "RUNNING":
            mc.set_tag(earlier, "lifecycle.superseded_by", now_id)
            mc.set_terminated(earlier, status="FAILED")
            report(f"earlier attempt {earlier} was left RUNNING (its launcher died): ended FAILED")
    except Exception as exc:  # noqa: BLE001 - bookkeeping of an old attempt must not stop the new one
        report(f"warning: earlier attempt {earlier} not ended: {type(exc).__name__}: {exc}")


def trainer_command(
    python: str, config_path: str, nproc: int, nnodes: int = 1, rdzv_endpoint: str = "", rdzv_id: str = ""
) -> list[str]:
    """The command that runs the trainer: torchrun for several processes, plain python for one.
    The same command runs locally and in a training pod; several nodes meet at ``rdzv_endpoint``
    (c10d rendezvous), each node starting ``nproc`` processes."""
    entry = ["-m", "training.finetune", "--config", config_path]
    if nnodes > 1:
        if not rdzv_endpoint:
            raise TrainingError("multi-node training needs a rendezvous endpoint")
        return [
            python, "-m", "torch.distributed.run", f"--nnodes={nnodes}", f"--nproc-per-node={nproc}",
            "--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv_endpoint}", f"--rdzv-id={rdzv_id or 'lifecycle'}", *entry,
        ]  # fmt: skip
    if nproc > 1:
        return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *entry]
    return [python, *entry]


def launch_local(cfg: TrainConfig, nproc: int, out_dir: Path, report: Report) -> None:
    """Run the training job here, streaming its output; raise with the tail of its log when it fails."""
    launch_cfg = out_dir / "launch-config.json"
    cfg.save(launch_cfg)
    cmd = trainer_command(sys.executable, str(launch_cfg), nproc)
    log_path = out_dir / "train.log"
    tail: deque[str] = deque(maxlen=25)
    with (
        log_path.open("a") as log,
        subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            pass_fds=[fd for p, fd in _LOCKS.items() if p == out_dir.resolve()],
        ) as proc,
    ):
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            tail.append(line.rstrip())
            if not line.startswith(("Loading weights", "  warnings.warn")) and "Warning" not in line:
                report(line.rstrip())
        code = proc.wait()
    if code != 0:
        last = next((t for t in reversed(tail) if t.strip()), "")
        raise TrainingError(f"training exited with code {code}: {last}\nlog: {log_path}\n" + "\n".join(tail))


def _log_model(mlflow_run_id: str, cfg: TrainConfig, out_dir: Path, metrics: dict[str, float], store: Store) -> str:
    """Final metrics, files of the run, and the adapter as an MLflow model (base + adapter in one load).
    The sha256 of every adapter file is recorded in Mongo first (lifecycle/digests.py): what serving and
    evaluation verify; the run's ``sha256.*`` tags only show them."""
    import mlflow

    from lifecycle import digests as artifact_digests

    adapter = out_dir / ("merged" if cfg.merge else "adapter")
    digests = artifact_digests.record(store, mlflow_run_id, out_dir / "adapter", cfg.base_model).files
    with mlflow.start_run(run_id=mlflow_run_id), warnings.catch_warnings():
        # the signature is given; an input example would make MLflow load and run the model here
        warnings.filterwarnings("ignore", message=".*input example was not provided", category=UserWarning)
        mlflow.log_metrics(metrics)
        for name in ("metrics.jsonl", "result.json"):
            mlflow.log_artifact(str(out_dir / name))
        _log_curves(out_dir, f"{Path(cfg.out_dir).name} on {Path(cfg.dataset).name}")
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(MODEL_CODE),
            artifacts={"adapter": str(out_dir / "adapter")},
            # dtype/device logged (as "auto") so that a loader's model_config may override them: MLflow
            # ignores, with a warning, any key the logged config does not have.
            model_config={
                "base_model": cfg.base_model,
                "merged": str(adapter) if cfg.merge else "",
                "dtype": "auto",
                "device": "auto",
            },
            pip_requirements=["llm-lifecycle"],
            signature=_signature(),
        )
        mlflow.set_tags({f"{registry.DIGEST_TAG_PREFIX}{k}": v for k, v in digests.items()})
    return str(info.model_uri)


def airflow_tags(settings: Settings, origin: dict[str, str]) -> dict[str, str]:
    """Run tags naming the Airflow DAG run (and try) that trained it, with its address; the run's
    description (MLflow's note) links to it too."""
    from lifecycle import links

    dag_id, dag_run = origin.get("dag_id", ""), origin.get("run_id", "")
    tags = {lineage.AIRFLOW_DAG_TAG: dag_id, lineage.AIRFLOW_RUN_TAG: dag_run}
    if dag_id and dag_run:
        url = links.airflow_run(settings, dag_id, dag_run)
        attempt = f" (try {origin['try_number']})" if origin.get("try_number") else ""
        note = f"Trained by Airflow DAG run [{dag_id} / {dag_run}]({url}){attempt}."
        tags.update({"lifecycle.airflow.try_number": origin.get("try_number", ""), "lifecycle.airflow.url": url,
                     "mlflow.note.content": note})  # fmt: skip
    return tags


def log_dataset_inputs(mc: Any, mlflow_run_id: str, dataset: Path, store: Store) -> None:
    """The dataset version as the run's inputs: the training split named by the dataset id, the eval split
    ``<id>/eval``; digest = sha256 of the split file, source = that file, tags = where it was ingested
    from, its record count and its parents."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    from lifecycle.store import DATASETS

    doc = store.get(DATASETS, dataset.name) or {}
    inputs = []
    for split, context in (("train", "training"), ("eval", "eval")):
        path = dataset / f"{split}.jsonl"
        if not path.exists():
            continue
        with warnings.catch_warnings():  # "can be interpreted in multiple ways": both are the local source
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(str(path))
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]  # MLflow keeps one input per name+digest
        name = dataset.name if split == "train" else f"{dataset.name}/{split}"
        meta = MetaDataset(source, name=name, digest=digest)  # type: ignore[abstract]
        tags = [InputTag("mlflow.data.context", context), InputTag("lifecycle.records", str(doc.get(split, "")))]
        if doc.get("source"):
            tags.append(InputTag("lifecycle.source", str(doc["source"])[:5000]))
        if doc.get("parents"):
            tags.append(InputTag("lifecycle.parents", ",".join(doc["parents"])))
        inputs.append(DatasetInput(meta._to_mlflow_entity(), tags))
    mc.log_inputs(mlflow_run_id, datasets=inputs)


def _log_curves(out_dir: Path, title: str) -> None:
    """The training curves as a figure of the active run (a drawing failure costs the picture only)."""
    import mlflow

    from training import figures

    try:
        rows = figures.read_metrics(out_dir / "metrics.jsonl")
        if not rows:
            return
        fig = figures.training_curves(rows, title)
        mlflow.log_figure(fig, "figures/training_curves.png")
        figures.close(fig)
    except Exception as exc:  # noqa: BLE001 - a picture is never worth a lost run
        print(f"warning: training curves not drawn: {type(exc).__name__}: {exc}")


def _signature() -> Any:
    from mlflow.models import infer_signature

    return infer_signature(["What is the capital of Thandfusnu?"], ["Kronzaemfei."], params={"max_new_tokens": 64})


def summary(run: TrainingRun) -> dict[str, Any]:
    return {"run_id": run.run_id, "mlflow_run_id": run.mlflow_run_id, "dataset_id": run.dataset_id, **run.metrics}
