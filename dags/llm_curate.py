"""llm_curate: users' feedback becomes the next training set (the flywheel).

Started by each ``FeedbackReceived`` on ``lifecycle.feedback`` (Airflow Asset + AssetWatcher) and on
``LIFECYCLE_CURATE_SCHEDULE`` (daily; empty: events only): ``curate`` takes the feedback not curated
yet; with fewer than ``min_feedback`` items (``LIFECYCLE_CURATE_MIN_FEEDBACK``) on an event it skips
and they wait, on the schedule it curates whatever is there. Corrections and accepted answers become
chat records, personal data scrubbed, anything overlapping an eval split refused, duplicates and near duplicates removed
(``training/curate.py``); each item's fate is written on its Mongo ``feedback`` document and the
records go out as a ``TrainingDataArrived`` event on ``lifecycle.training-data`` — the event a user
would send — so ``llm_lifecycle_kafka`` ingests, trains, gates and rolls out the result. Every record
names the response and feedback it came from (``training/flywheel.py``).
"""

from __future__ import annotations

from typing import Any

from airflow.providers.common.messaging.triggers.msg_queue import MessageQueueTrigger
from airflow.sdk import Asset, AssetWatcher, Param, get_current_context, task
from airflow.timetables.assets import AssetOrTimeSchedule
from airflow.timetables.trigger import CronTriggerTimetable

from lifecycle import topics
from plugins.lifecycle_tasks import lifecycle_dag, parse_settings

SETTINGS = parse_settings()

feedback = Asset(
    name="lifecycle_feedback",
    uri=f"kafka://{SETTINGS.kafka_bootstrap}/{topics.FEEDBACK}",
    watchers=[
        AssetWatcher(
            name="lifecycle_feedback_watcher",
            trigger=MessageQueueTrigger(
                scheme="kafka",
                topics=[topics.FEEDBACK],
                kafka_config_id="lifecycle_kafka",
                apply_function="plugins.feedback_intake.accept",
                poll_timeout=1,
                poll_interval=1,
            ),
        )
    ],
)


@lifecycle_dag(
    "llm_curate",
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable(SETTINGS.curate_schedule, timezone="UTC"), assets=[feedback]
    )
    if SETTINGS.curate_schedule
    else [feedback],  # LIFECYCLE_CURATE_SCHEDULE empty: on feedback events only
    tags=["flywheel", "kafka"],
    doc=__doc__,
    max_active_runs=1,
    is_paused_upon_creation=False,  # the flywheel turns once deployed (LIFECYCLE_CURATE_MIN_FEEDBACK bounds it)
    params={
        "min_feedback": Param(
            SETTINGS.curate_min_feedback,
            type="integer",
            minimum=1,
            title="Feedback items",
            description="Items not curated yet a run needs on an event (the schedule takes any).",
        ),
        "training_params": Param(
            {},
            type="object",
            title="Training params",
            description="The event's params for the training run (the same allow-list as any "
            "TrainingDataArrived event, LIFECYCLE_EVENT_PARAMS).",
        ),
        "dataset_name": Param("feedback", type="string", pattern="^[A-Za-z0-9][A-Za-z0-9._-]*$", title="Dataset name"),
    },
)
def llm_curate() -> None:
    @task(retries=2)
    def curate(params: dict[str, Any] | None = None) -> dict[str, Any]:
        from airflow.exceptions import AirflowSkipException

        from lifecycle.settings import load_settings
        from lifecycle.store import Store
        from training.flywheel import curate_feedback

        assert params is not None
        ctx = get_current_context()
        scheduled = ctx["dag_run"].run_type == "scheduled"
        s = load_settings()
        with Store.connect(s) as store:
            done = curate_feedback(s, store, min_items=1 if scheduled else int(params["min_feedback"]),
                                   dataset=params["dataset_name"], params=dict(params["training_params"] or {}),
                                   run_id=ctx["dag_run"].run_id)  # fmt: skip
        for r in done.get("refusals", []):
            print(f"refused {r['feedback_id']}: {r['reason']}")
        print({k: v for k, v in done.items() if k != "refusals"})
        if done["state"] == "waiting":
            raise AirflowSkipException(f"{done['pending']} feedback items pending, {done['min_items']} needed")
        return {k: v for k, v in done.items() if k != "refusals"}

    curate()


llm_curate_dag = llm_curate()
