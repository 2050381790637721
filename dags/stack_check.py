"""stack_check: proves the Airflow of the local stack reaches Kafka, MongoDB and MLflow.

Trigger it from the UI (or `airflow dags test stack_check`) after `lifecycle up`. Each task reads
one Airflow connection made from the settings (lifecycle_kafka, lifecycle_mongo, lifecycle_mlflow)
and fails with the address it could not reach.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import task

from plugins.lifecycle_tasks import lifecycle_dag

DEFAULT_ARGS = {"owner": "llm-lifecycle", "retries": 2, "retry_delay": pendulum.duration(seconds=10)}


@lifecycle_dag("stack_check", schedule=None, tags=["ops"], doc=__doc__, default_args=DEFAULT_ARGS)
def stack_check() -> None:
    @task
    def check_kafka() -> list[str]:
        from airflow.providers.apache.kafka.hooks.client import KafkaAdminClientHook

        admin = KafkaAdminClientHook(kafka_config_id="lifecycle_kafka").get_conn
        return sorted(t for t in admin.list_topics(timeout=10).topics if t.startswith("lifecycle."))

    @task
    def check_mongo() -> str:
        from airflow.providers.mongo.hooks.mongo import MongoHook

        with MongoHook(mongo_conn_id="lifecycle_mongo").get_conn() as client:
            return str(client.admin.command("buildInfo").get("version"))

    @task
    def check_mlflow() -> int:
        import mlflow
        from airflow.sdk import Connection

        uri = Connection.get("lifecycle_mlflow").extra_dejson["tracking_uri"]
        return len(mlflow.MlflowClient(uri).search_experiments())

    [check_kafka(), check_mongo(), check_mlflow()]


stack_check_dag = stack_check()
