"""The retrain DAG fires on the cron the settings give it: the test stack sets
``LIFECYCLE_RETRAIN_SCHEDULE`` to every minute and creates its DAGs paused (``LIFECYCLE_DAGS_PAUSED``),
so the DAG runs only while this test has it unpaused."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from lifecycle.airflow_client import call, dag_ids
from lifecycle.settings import Settings
from lifecycle.stack.process import wait_for

pytestmark = pytest.mark.stack
DAG = "llm_lifecycle_retrain"


def _runs(s: Settings) -> dict[str, dict[str, Any]]:
    got = call(s, "GET", f"/api/v2/dags/{DAG}/dagRuns?limit=100&order_by=-id")["dag_runs"]
    return {r["dag_run_id"]: r for r in got}


def test_the_retrain_dag_fires_on_the_cron_set_through_settings(stack: Settings) -> None:
    assert stack.retrain_schedule == "* * * * *", "the test stack's schedule (tests/conftest.py)"
    assert wait_for(lambda: DAG in dag_ids(stack), timeout=120) == "ok"
    dag = call(stack, "GET", f"/api/v2/dags/{DAG}")
    assert dag["timetable_summary"] == stack.retrain_schedule  # parsed from the settings, not the default
    before = set(_runs(stack))
    call(stack, "PATCH", f"/api/v2/dags/{DAG}", {"is_paused": False})
    try:
        scheduled = lambda: [r for i, r in _runs(stack).items() if i not in before and r["run_type"] == "scheduled"]  # noqa: E731
        assert wait_for(lambda: bool(scheduled()), timeout=150, interval=2) == "ok", "no scheduled run within 150 s"
    finally:
        call(stack, "PATCH", f"/api/v2/dags/{DAG}", {"is_paused": True})
    run = scheduled()[-1]
    slot = dt.datetime.fromisoformat(run["logical_date"].replace("Z", "+00:00"))
    assert (slot.second, slot.microsecond) == (0, 0), f"a cron slot of '* * * * *', got {slot}"
    assert abs((dt.datetime.now(dt.UTC) - slot).total_seconds()) < 300
    assert run["triggered_by"] in ("timetable", "TIMETABLE"), run
    # Paused again, the run goes no further (it would retrain on every test dataset): end it.
    call(stack, "PATCH", f"/api/v2/dags/{DAG}/dagRuns/{run['dag_run_id']}", {"state": "failed"})
    path = f"/api/v2/dags/{DAG}/dagRuns/{run['dag_run_id']}"
    assert wait_for(lambda: call(stack, "GET", path)["state"] == "failed", timeout=30) == "ok"
