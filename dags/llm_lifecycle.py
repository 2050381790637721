"""llm_lifecycle: ingest -> validate -> fine_tune -> evaluate -> promote -> notify.

Trigger it from the UI (the trigger dialog shows the form below) or the REST API with a JSON
``conf``. Tasks pass ids through XCom (dataset id, MLflow run id, model version), never data; every
task is idempotent for the same inputs, so a retry neither duplicates a registry version nor a
Mongo document. The task bodies live in ``plugins/pipeline.py`` over the ``training`` functions.
"""

from __future__ import annotations

from airflow.sdk import get_current_context, task

from plugins.lifecycle_tasks import lifecycle_dag, train_and_promote
from plugins.params import PIPELINE, form

PARAMS = form("dataset_path", "eval_path", "dataset_name", "base_model", *PIPELINE)


@lifecycle_dag("llm_lifecycle", schedule=None, tags=["training"], doc=__doc__, max_active_runs=1, params=PARAMS)
def llm_lifecycle() -> None:
    @task(retries=0)  # bad data does not get better on retry
    def ingest() -> str:
        from plugins import pipeline

        ctx = get_current_context()
        records = (ctx["dag_run"].conf or {}).get("records")
        return pipeline.ingest(dict(ctx["params"]), records=records)

    train_and_promote(ingest())


llm_lifecycle_dag = llm_lifecycle()
