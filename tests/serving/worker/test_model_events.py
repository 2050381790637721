"""What a worker does with model events: it serves what the champion alias names. An event only says
when to look; a forged or replayed one moves nothing; a version that fails to load is kept out."""

from __future__ import annotations

from typing import Any

from lifecycle import events
from lifecycle.settings import load_settings
from lifecycle.v1 import events_pb2
from serving.worker.loader import LoadError
from serving.worker.model_events import ModelEventConsumer, hint


def promoted(version: int, name: str = "m", alias: str = "champion") -> events_pb2.ModelPromoted:
    return events.new_event(events_pb2.ModelPromoted, model_name=name, version=version, alias=alias)  # type: ignore[return-value]


def test_events_of_the_workers_model_hint_at_a_champion() -> None:
    assert hint(promoted(3), "m") == 3
    assert hint(promoted(3, alias=""), "m") == 3
    assert hint(promoted(4, name="other"), "m") is None
    assert hint(promoted(4, alias="challenger"), "m") is None
    assert hint(events.new_event(events_pb2.ModelRolledBack, model_name="m", version=2, from_version=3), "m") == 2
    assert hint(events.new_event(events_pb2.ModelLoadFailed, model_name="m", version=5), "m") is None


class Fake:
    """A worker's serving state and a registry alias, in memory (no service is involved: loads that
    succeed publish nothing)."""

    def __init__(self, alias: str | None, serving: str | None) -> None:
        self.alias, self.serving, self.loads = alias, serving, list[str]()

    def load(self, name: str, version: str) -> Any:
        self.loads.append(version)
        return version

    def switch(self, slot: Any) -> None:
        self.serving = slot

    def consumer(self) -> ModelEventConsumer:
        c = ModelEventConsumer(load_settings(model_name="m"), "w", lambda: self.serving, self.switch, self.load,
                               champion=lambda: self.alias)  # fmt: skip
        c.alias_wait = 0.5
        return c


def test_the_worker_follows_the_alias_not_the_event() -> None:
    f = Fake(alias="3", serving="2")
    c = f.consumer()
    c.handle(events.encode(promoted(3)))
    assert (f.serving, f.loads) == ("3", ["3"])
    c.handle(events.encode(promoted(3)))  # a duplicate delivery: nothing to do
    assert f.loads == ["3"]
    # A forged rollback (or a replayed old promotion): the alias did not move, so neither does the worker.
    forged = events.new_event(events_pb2.ModelRolledBack, model_name="m", version=1, from_version=3)
    c.handle(events.encode(forged))
    c.handle(events.encode(promoted(2)))
    assert (f.serving, f.loads) == ("3", ["3"])
    # A missed event (or a worker restarted on an old version): the poll brings it to the alias.
    f.alias = "5"
    assert c.follow(retry_failed=False) == "5" and f.serving == "5"
    f.alias = None  # the alias removed: keep serving what is served
    assert c.follow(retry_failed=False) is None and f.serving == "5"


def test_a_version_that_failed_to_load_is_not_retried_by_the_poll() -> None:
    f = Fake(alias="7", serving="6")
    c = f.consumer()
    c.failed.add("7")  # reported once already (publishing the report needs Kafka: see test_hot_swap)
    assert c.follow(retry_failed=False) is None and f.loads == []
    assert c.follow(retry_failed=True) == "7" and f.serving == "7" and "7" not in c.failed

    def broken(name: str, version: str) -> Any:
        raise LoadError(f"{name} v{version}: broken")

    c.load = broken
    f.alias = "8"
    c.failed.add("8")
    assert c.follow(retry_failed=True) is None and f.serving == "7"  # kept; reported before, not again
