"""llm_lifecycle_intake_reconcile: re-publish training-data events that were landed but never started.

The Kafka watcher commits a message's offset before Airflow stores the asset event; a triggerer that
dies in between leaves the event ``received`` in Mongo ``training_events`` with no run. Every five
minutes this re-publishes such events older than two minutes, unless a run of ``llm_lifecycle_kafka`` is
queued or running (it may be the one carrying them, waiting for a slot: a copy would start a duplicate
run); the watcher lets them through again and the runs' atomic claim keeps it to one training per event.
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
        from airflow.sdk import get_current_context

        from plugins import kafka_intake

        waiting = get_current_context()["ti"].get_dr_count("llm_lifecycle_kafka", states=["queued", "running"])
        sent = kafka_intake.redeliver_stuck(waiting_runs=waiting)
        if waiting:
            print(f"{waiting} run(s) of llm_lifecycle_kafka queued or running: no event re-published this time")
        print(f"re-published {len(sent)} stuck event(s): {sent}")
        return sent

    redeliver()


llm_lifecycle_intake_reconcile_dag = llm_lifecycle_intake_reconcile()
