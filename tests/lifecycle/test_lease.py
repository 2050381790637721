"""The alias lease and compare-and-set, against the test stack's MongoDB-protocol server and MLflow: one
holder at a time among racing threads, a dead holder's lease taken over once, and of two promotions
decided against the same champion exactly one moves the alias."""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Iterator

import pytest

from lifecycle import champion, lease, registry
from lifecycle.settings import Settings
from lifecycle.store import LEASES, Store, now

pytestmark = pytest.mark.stack


@pytest.fixture
def store(stack: Settings) -> Iterator[Store]:
    with Store.connect(stack) as s:
        yield s


def test_one_holder_at_a_time_among_racing_threads(stack: Settings) -> None:
    key = f"test:{uuid.uuid4().hex[:8]}"
    inside, most, entered = [0], [0], []
    guard = threading.Lock()

    def worker(i: int) -> None:
        with Store.connect(stack) as store, lease.held(store, key, wait=60):
            with guard:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
                entered.append(i)
            store.get(LEASES, key)  # a round trip while holding it
            with guard:
                inside[0] -= 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(entered) == list(range(6)) and most[0] == 1


def test_a_dead_holders_lease_is_taken_over_and_a_live_one_is_waited_for(store: Store) -> None:
    key = f"test:{uuid.uuid4().hex[:8]}"
    expired = now() - dt.timedelta(seconds=5)
    store.db[LEASES].insert_one({"_id": key, "token": "dead", "holder": "gone:1", "expires": expired})
    with lease.held(store, key, wait=5) as token:
        assert store.get(LEASES, key)["token"] == token
        with pytest.raises(lease.LeaseError, match=f"{key} is held by .*waited 0 s"), lease.held(store, key, wait=0.3):
            pass
    assert store.get(LEASES, key) is None  # released


def test_of_two_promotions_decided_against_one_champion_exactly_one_moves_the_alias(
    stack: Settings, store: Store
) -> None:
    import mlflow

    mc = registry.client(stack.mlflow_tracking_uri)
    mlflow.set_tracking_uri(stack.mlflow_tracking_uri)
    name = f"test-cas-{uuid.uuid4().hex[:8]}"
    exp = mc.create_experiment(name)
    run = mc.create_run(exp)
    mc.create_registered_model(name)
    for _ in range(3):
        mc.create_model_version(name, f"runs:/{run.info.run_id}/x", run_id=run.info.run_id)
    assert champion.move(stack, store, name, 1, expected=0)
    outcomes: dict[int, str] = {}

    def promote(version: int) -> None:
        with Store.connect(stack) as own:
            try:
                champion.move(stack, own, name, version, expected=1)
                outcomes[version] = "moved"
            except champion.AliasMoved as exc:
                outcomes[version] = str(exc)

    threads = [threading.Thread(target=promote, args=(v,)) for v in (2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    winner = [v for v, o in outcomes.items() if o == "moved"]
    assert len(winner) == 1, outcomes
    loser = 5 - winner[0]
    assert outcomes[loser] == f"{name}'s champion is v{winner[0]}, not v1 as this decision assumed"
    assert champion.current(stack, name) == winner[0]
    assert not champion.move(stack, store, name, winner[0], expected=1)  # already there: nothing to do
