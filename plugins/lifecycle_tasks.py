"""TaskFlow tasks shared by the lifecycle DAGs: validate -> fine_tune -> evaluate -> promote -> notify,
and, when the promotion started a rollout (shadow/canary policy), ``follow_rollout`` triggers
``llm_rollout`` for it (one run per lifecycle run), so the stages show in Airflow without a second step.

Each task reads the DAG run's params and passes ids only; bodies are in ``plugins/pipeline.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pendulum
from airflow.sdk import Asset, XComArg, dag, get_current_context, task

from lifecycle.settings import Settings, load_settings


def parse_settings() -> Settings:
    """The settings a DAG file may read while it is parsed: from the environment, with their defaults;
    no connection is opened. An invalid value fails the import, naming the variable."""
    return load_settings()


#: default_args of the project's DAGs: an owner, and retries with exponential backoff from
#: ``LIFECYCLE_RETRY_DELAY``.
DEFAULT_ARGS = {
    "owner": "llm-lifecycle",
    "retries": 2,
    "retry_delay": pendulum.duration(seconds=parse_settings().retry_delay),
    "retry_exponential_backoff": True,
    "max_retry_delay": pendulum.duration(minutes=5),
}


def lifecycle_dag(dag_id: str, *, schedule: Any, tags: list[str], doc: str | None, **kwargs: Any) -> Callable[..., Any]:
    """``@dag`` with what every DAG of the project shares: a fixed start date, no catch-up, the
    ``llm-lifecycle`` tag (the listener reports only tagged DAGs), ``DEFAULT_ARGS`` unless given, and a
    failed run told to the operators (``plugins/notify.py``: mail and/or webhook, as the settings say)."""
    from plugins.notify import FailureNotifier

    kwargs.setdefault("default_args", DEFAULT_ARGS)
    kwargs.setdefault("on_failure_callback", FailureNotifier())
    return dag(
        dag_id=dag_id, schedule=schedule, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False,
        tags=["llm-lifecycle", *tags], doc_md=doc, **kwargs,
    )  # fmt: skip


def _params() -> dict[str, Any]:
    """The run's params, with the overrides an event carried (pushed by ``ingest``) on top."""
    ctx = get_current_context()
    override = ctx["ti"].xcom_pull(task_ids="ingest", key="params_override") or {}
    return {**dict(ctx["params"]), **override}


#: Asset outlets, so Airflow's Asset graph shows the lineage: each validated dataset version and each
#: promotion decision is an asset event whose ``extra`` names it (dataset id; model, version, alias).
DATASETS = Asset(name="lifecycle-datasets", uri="lifecycle://datasets", group="dataset")
MODELS = Asset(name="lifecycle-models", uri="lifecycle://models", group="model")


@task(retries=0, outlets=[DATASETS])  # a dataset or model that cannot work does not get better on retry
def validate(dataset_id: str) -> str:
    from plugins import pipeline

    out = pipeline.validate(dataset_id, _params())
    get_current_context()["outlet_events"][DATASETS].extra = {"dataset_id": dataset_id}
    return out


@task(retries=1)
def fine_tune(dataset_id: str) -> str:
    from plugins import pipeline

    ctx = get_current_context()
    return pipeline.fine_tune(dataset_id, _params(), ctx["dag_run"].run_id, context=ctx)


@task
def evaluate(mlflow_run_id: str) -> dict[str, Any]:
    from plugins import pipeline

    return pipeline.evaluate(mlflow_run_id, _params())


@task(outlets=[MODELS])
def promote(mlflow_run_id: str, _evaluation: dict[str, Any]) -> dict[str, Any]:
    from plugins import pipeline

    result = pipeline.promote(mlflow_run_id, _params())
    get_current_context()["outlet_events"][MODELS].extra = {k: result[k] for k in ("model_name", "version", "alias")}
    return result


@task
def notify(result: dict[str, Any]) -> None:
    print(f"{result['model_name']} v{result['version']} -> {result['alias']}: {result['reason']}")


@task.short_circuit(retries=0)
def rollout_started(result: dict[str, Any]) -> dict[str, Any] | bool:
    """The ``llm_rollout`` conf when the promotion started a rollout; False (what follows is skipped)
    when the version became champion at once or was not promoted."""
    if not result.get("rollout"):  # champion at once, or kept as challenger by the gate
        print(f"no rollout: v{result['version']} -> {result['alias'] or 'not promoted'}")
        return False
    return {"model_name": result["model_name"], "version": int(result["version"])}


def train_and_promote(dataset_id: XComArg | str) -> None:
    """Wire the shared chain after whatever task produced ``dataset_id``."""
    from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator

    run_id = fine_tune(validate(dataset_id))
    result = promote(run_id, evaluate(run_id))
    notify(result)
    conf = rollout_started(result)
    follow_rollout = TriggerDagRunOperator(
        task_id="follow_rollout", trigger_dag_id="llm_rollout", conf=conf, retries=1,
        trigger_run_id="rollout__{{ dag_run.run_id }}", skip_when_already_exists=True,  # a retry starts none
    )  # fmt: skip
    conf >> follow_rollout
