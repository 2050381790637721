"""llm_lifecycle_kafka: a run per message on ``lifecycle.training-data`` (Airflow Asset + AssetWatcher).

Publish ``{"event_id", "type": "TrainingDataArrived", "occurred_at", "dataset", "records": [...]}``
(or ``"uri": "file:///….jsonl"`` in place of ``records``, and optionally ``"params": {...}``; with
``"base_dataset": ID`` the records extend that dataset version, or alone retrain on it) and a run
starts with the payload; ``params`` may set only the training recipe (``plugins/params.py``:
``EVENT_PARAMS``), each value checked against the form's schema, else the event fails naming the
key. The watcher lands each message in Mongo before its offset counts as consumed and each run
claims its events atomically, so a killed triggerer loses nothing and a message delivered twice
trains once (see ``plugins/kafka_intake.py``). The ``reconcile`` task of
``llm_lifecycle_intake_reconcile`` re-publishes events that were landed but never started.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.common.messaging.triggers.msg_queue import MessageQueueTrigger
from airflow.sdk import Asset, AssetWatcher, get_current_context, task

from plugins.lifecycle_tasks import lifecycle_dag, parse_settings, train_and_promote
from plugins.params import PIPELINE, form

TOPIC = "lifecycle.training-data"
# Names the asset only; the watcher's broker address comes from the lifecycle_kafka connection.
BOOTSTRAP = parse_settings().kafka_bootstrap

training_data = Asset(
    name="lifecycle_training_data",
    uri=f"kafka://{BOOTSTRAP}/{TOPIC}",
    watchers=[
        AssetWatcher(
            name="lifecycle_training_data_watcher",
            trigger=MessageQueueTrigger(
                scheme="kafka",
                topics=[TOPIC],
                kafka_config_id="lifecycle_kafka",
                apply_function="plugins.kafka_intake.accept",
                poll_timeout=1,
                poll_interval=1,
            ),
        )
    ],
)


@lifecycle_dag(
    "llm_lifecycle_kafka",
    schedule=[training_data],
    tags=["training", "kafka"],
    doc=__doc__,
    params=form("dataset_name", *PIPELINE, dataset_name="kafka"),
    max_active_runs=1,  # one training at a time from events: a burst of events queues, in order
)
def llm_lifecycle_kafka() -> None:
    @task.short_circuit(retries=0)
    def claim() -> list[str] | bool:
        """Take this run's events; a run whose events were all claimed already does nothing."""
        from plugins import kafka_intake

        ctx = get_current_context()
        keys = [e.extra["payload"]["event_id"] for e in ctx["triggering_asset_events"][training_data]
                if (e.extra or {}).get("payload")]  # fmt: skip
        got = kafka_intake.claim(keys, ctx["dag_run"].run_id)
        print(f"events {keys}: claimed {got or 'none (duplicates)'}")
        return got or False

    @task(retries=0)  # bad data does not get better on retry
    def ingest(event_ids: list[str]) -> str:
        from plugins import kafka_intake, pipeline
        from plugins.params import check_event_params

        ctx = get_current_context()
        records: list[Any] = []
        params = dict(ctx["params"])
        try:
            for payload in kafka_intake.payloads(event_ids):
                data = kafka_intake.parse_payload(payload)
                params.update(check_event_params(data.get("params"), parse_settings().event_params))
                params["dataset_name"] = data.get("dataset") or params["dataset_name"]
                if data.get("uri"):
                    params["dataset_path"] = data["uri"]
                if data.get("base_dataset"):  # a new version of a known dataset (lifecycle/forget.py, the flywheel)
                    params["base_dataset"] = data["base_dataset"]
                records += data.get("records") or []
            dataset_id = pipeline.ingest(params, records=records or None)
        except Exception as exc:
            kafka_intake.record(event_ids, state="failed", error=f"{type(exc).__name__}: {exc}")
            raise
        kafka_intake.record(event_ids, dataset_id=dataset_id)
        # The payload's params override the DAG's for every later task of this run.
        ctx["ti"].xcom_push(key="params_override", value={k: v for k, v in params.items() if k != "dataset_path"})
        return dataset_id

    train_and_promote(ingest(claim()))


llm_lifecycle_kafka_dag = llm_lifecycle_kafka()
