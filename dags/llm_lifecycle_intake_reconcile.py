"""llm_lifecycle_intake_reconcile: re-publish training-data events that were landed but never started.

The Kafka watcher commits a message's offset before Airflow stores the asset event; a triggerer that
dies in between leaves the event ``received`` in Mongo ``training_events`` with no run. Every five
minutes this re-publishes such events older than two minutes; the watcher lets them through again
and the runs' atomic claim keeps it to one training per event.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import task

from plugins.lifecycle_tasks import lifecycle_dag


@lifecycle_dag(
    "llm_lifecycle_intake_reconcile",
    schedule="*/5 * * * *",
    tags=["kafka", "ops"],
    doc=__doc__,
    max_active_runs=1,
    default_args={"owner": "llm-lifecycle", "retries": 1, "retry_delay": pendulum.duration(seconds=30)},
)
def llm_lifecycle_intake_reconcile() -> None:
    @task
    def redeliver() -> list[str]:
        from plugins import kafka_intake

        sent = kafka_intake.redeliver_stuck()
        print(f"re-published {len(sent)} stuck event(s): {sent}")
        return sent

    redeliver()


llm_lifecycle_intake_reconcile_dag = llm_lifecycle_intake_reconcile()
