"""Which model events a worker applies: newer promotions and rollbacks of its model, nothing else."""

from __future__ import annotations

from lifecycle import events
from lifecycle.v1 import events_pb2
from serving.worker.model_events import decide


def promoted(version: int, name: str = "m", alias: str = "champion") -> events_pb2.ModelPromoted:
    return events.new_event(events_pb2.ModelPromoted, model_name=name, version=version, alias=alias)  # type: ignore[return-value]


def test_newer_promotions_are_applied_duplicates_and_older_ones_skipped() -> None:
    assert decide(promoted(3), "m", None) == "3"  # nothing served yet
    assert decide(promoted(3), "m", "local") == "3"
    assert decide(promoted(3), "m", "2") == "3"
    assert decide(promoted(3), "m", "3") is None  # duplicate delivery
    assert decide(promoted(2), "m", "3") is None  # older
    assert decide(promoted(4, name="other"), "m", "3") is None
    assert decide(promoted(4, alias="challenger"), "m", "3") is None


def test_rollback_swaps_back_even_to_an_older_version() -> None:
    back = events.new_event(events_pb2.ModelRolledBack, model_name="m", version=2, from_version=3)
    assert decide(back, "m", "3") == "2"
    assert decide(back, "m", "2") is None
    failed = events.new_event(events_pb2.ModelLoadFailed, model_name="m", version=5)
    assert decide(failed, "m", "3") is None
