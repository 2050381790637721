"""llm_lifecycle_retrain: scheduled retraining on the data ingested since the champion was trained.

Runs on ``LIFECYCLE_RETRAIN_SCHEDULE`` (cron, default Sundays 03:00 UTC). When no dataset was
ingested after the champion's training run started, the run short-circuits: everything after
``find_new_data`` is skipped and the run succeeds. Otherwise the new datasets are merged into one
(deduplicated, keyed by content) and go through validate -> fine_tune -> evaluate -> promote.
"""

from __future__ import annotations

from airflow.sdk import get_current_context, task

from plugins.lifecycle_tasks import lifecycle_dag, parse_settings, train_and_promote
from plugins.params import PIPELINE, form


@lifecycle_dag(
    "llm_lifecycle_retrain",
    schedule=parse_settings().retrain_schedule,  # LIFECYCLE_RETRAIN_SCHEDULE
    tags=["training", "scheduled"],
    doc=__doc__,
    max_active_runs=1,
    params=form(*PIPELINE),
)
def llm_lifecycle_retrain() -> None:
    @task.short_circuit
    def find_new_data() -> list[str] | bool:
        from plugins import pipeline

        new = pipeline.new_data_since_champion(dict(get_current_context()["params"]))
        print(f"datasets ingested since the champion was trained: {new or 'none'}")
        return new or False

    @task
    def merge(dataset_ids: list[str]) -> str:
        from plugins import pipeline

        return pipeline.merge_datasets(dataset_ids, dict(get_current_context()["params"]))

    train_and_promote(merge(find_new_data()))


llm_lifecycle_retrain_dag = llm_lifecycle_retrain()
