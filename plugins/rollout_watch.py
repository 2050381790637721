"""The ``llm_rollout`` DAG's waiting: one deferrable sensor per rollout stage, resumed by a trigger in
the triggerer that reads the rollout record (lifecycle/rollout.py) every few seconds. No worker slot
is held while a stage gathers evidence. The gateway decides; this only shows and waits:

- ``passed``: the rollout moved beyond the stage (or was promoted) -> the task succeeds;
- ``rolled_back``: it was rolled back or aborted *in* this stage -> the task fails with the reason;
- ``not_reached``: it ended before this stage -> the task is skipped.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.exceptions import AirflowFailException, AirflowSkipException
from airflow.sdk import BaseSensorOperator
from airflow.triggers.base import BaseTrigger, TriggerEvent


def outcome(doc: dict[str, Any] | None, stage: int) -> dict[str, Any] | None:
    """What the record says of ``stage``: None while it is still to be decided (pure)."""
    if doc is None:
        return {"outcome": "missing", "reason": "no such rollout"}
    decisions = doc.get("decisions") or [{}]
    last = decisions[-1]
    if doc["stage"] > stage or doc["state"] in ("promoting", "promoted"):
        # decision k moved the rollout into stage k (0 started it): stage + 1 is the one that left it
        left = decisions[stage + 1] if stage + 1 < len(decisions) else last
        return {"outcome": "passed", "reason": left.get("reason", ""), "state": doc["state"]}
    if doc["state"] in ("rolled_back", "aborted"):
        kind = "rolled_back" if doc["stage"] == stage else "not_reached"
        return {"outcome": kind, "reason": last.get("reason", ""), "state": doc["state"]}
    return None


def _read(rollout_id: str) -> dict[str, Any] | None:
    from lifecycle import rollout
    from lifecycle.settings import load_settings
    from lifecycle.store import Store

    with Store.connect(load_settings()) as store:
        return rollout.load(store, rollout_id)


class RolloutStageTrigger(BaseTrigger):
    def __init__(self, rollout_id: str, stage: int, poll_seconds: float = 2.0) -> None:
        super().__init__()
        self.rollout_id, self.stage, self.poll_seconds = rollout_id, stage, poll_seconds

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{__name__}.RolloutStageTrigger",
                {"rollout_id": self.rollout_id, "stage": self.stage, "poll_seconds": self.poll_seconds})  # fmt: skip

    async def run(self) -> AsyncIterator[TriggerEvent]:
        while True:
            try:
                found = outcome(await asyncio.to_thread(_read, self.rollout_id), self.stage)
            except Exception as exc:  # noqa: BLE001 - Mongo away: keep waiting, say so in the triggerer log
                self.log.warning("rollout %s: record not read: %s", self.rollout_id, exc)
                found = None
            if found is not None:
                yield TriggerEvent(found)
                return
            await asyncio.sleep(self.poll_seconds)


class RolloutStageSensor(BaseSensorOperator):
    """Waits (deferred) until the rollout leaves stage ``stage``."""

    template_fields = ("rollout_id",)

    def __init__(self, *, rollout_id: str, stage: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rollout_id, self.stage = rollout_id, stage

    def execute(self, context: Any) -> Any:
        found = outcome(_read(self.rollout_id), self.stage)
        if found is not None:
            return self.execute_complete(context, found)
        self.defer(trigger=RolloutStageTrigger(self.rollout_id, self.stage), method_name="execute_complete")

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        if event["outcome"] == "passed":
            print(f"stage {self.stage} passed: {event['reason']}")
            return event
        if event["outcome"] == "not_reached":
            raise AirflowSkipException(f"the rollout ended ({event['state']}) before stage {self.stage}")
        raise AirflowFailException(f"rollout {self.rollout_id} {event['outcome']} in stage {self.stage}: "
                                   f"{event['reason']}")  # fmt: skip
