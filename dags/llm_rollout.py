"""llm_rollout: a challenger's live rollout, one task per stage, each waiting (deferred, no worker
slot) until the gateway's decision takes the rollout past it — shadow, canary 5 %, 25 %, ... — then
``outcome``: success when the challenger was promoted, failed with the reason when it was rolled back.

``llm_lifecycle`` (and its Kafka and retrain variants) trigger it when their promotion starts a
rollout (task ``follow_rollout``); trigger it yourself with ``model_name`` and ``version`` for a
rollout started otherwise (``lifecycle rollout start``). Steer it with
``lifecycle rollout pause|resume|abort|promote`` or the REST admin API. The gateway decides; this DAG
shows where the rollout is and waits for it.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import Param, task

from plugins.lifecycle_tasks import lifecycle_dag
from plugins.params import form
from plugins.rollout_watch import RolloutStageSensor


@lifecycle_dag(
    "llm_rollout",
    schedule=None,
    tags=["rollout"],
    doc=__doc__,
    is_paused_upon_creation=False,  # started by llm_lifecycle's follow_rollout; it never runs by itself
    params={
        **form("model_name"),
        "version": Param(1, type="integer", minimum=1, title="Challenger version"),
    },
)
def llm_rollout() -> None:
    @task(retries=0)
    def plan(params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        from lifecycle import rollout
        from lifecycle.settings import load_settings
        from lifecycle.store import Store

        s = load_settings()
        assert params is not None
        name = params.get("model_name") or s.model_name
        with Store.connect(s) as store:
            doc = rollout.get(store, name, int(params["version"]))
        for i, st in enumerate(doc["stages"]):
            print(f"stage {i}: {st['kind']} at {st['share']:.0%}")
        return [{"rollout_id": doc["_id"], "stage": i} for i in range(len(doc["stages"]))]

    @task(retries=0, trigger_rule="all_done")
    def outcome(params: dict[str, Any] | None = None) -> str:
        from airflow.exceptions import AirflowFailException

        from lifecycle import rollout
        from lifecycle.settings import load_settings
        from lifecycle.store import Store

        s = load_settings()
        assert params is not None
        with Store.connect(s) as store:
            doc = rollout.get(store, params.get("model_name") or s.model_name, int(params["version"]))
        last = doc["decisions"][-1]
        print(f"{doc['_id']}: {doc['state']} — {last['reason']}\nevidence: {doc.get('evidence', {})}")
        if doc["state"] != "promoted":
            raise AirflowFailException(f"{doc['_id']} {doc['state']}: {last['reason']}")
        return str(doc["state"])

    # Retries: Airflow 3.3's scheduler fails a deferred task whose trigger fires before it has handled the
    # worker's exit from defer() and the task is already queued again ("reported that the task instance
    # finished with state success, but ... queued"; apache/airflow#67287, only the scheduled case is
    # fixed). A retry re-reads the record and ends at once; a rollback raises AirflowFailException,
    # which is never retried.
    stages = RolloutStageSensor.partial(task_id="stage", retries=2, retry_delay=timedelta(seconds=3)).expand_kwargs(
        plan()
    )
    stages >> outcome()


llm_rollout_dag = llm_rollout()
