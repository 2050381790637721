"""Writes to one Mongo document from two places at once, on the project's own database server (FerretDB's
SQLite backend where no mongod is installed, which applies an update as a read-modify-write outside any
transaction): an operator's pause survives the controller's looks running all along, and a gateway's
tally increments from its log writer and its feedback requests all count."""

from __future__ import annotations

import os
import threading

import pytest

from lifecycle import rollout
from lifecycle.settings import Settings
from lifecycle.stack import process
from lifecycle.store import ROLLOUTS, TALLIES, Store
from serving.gateway.inference_log import tally_inc

pytestmark = pytest.mark.stack


def test_a_pause_holds_while_looks_run_all_along(stack: Settings) -> None:
    s = stack
    name = f"pause-race-{os.getpid()}-{threading.get_ident() % 10000}"
    with Store.connect(s) as store, Store.connect(s) as looker:
        rollout.start(s, store, name, 2, 1, "canary")
        rid, looks, stop = f"{name}:2", [0], threading.Event()

        def look() -> None:
            while not stop.is_set():
                rollout.tick(s, looker, [name])  # a look with no evidence: it decides nothing, it writes what it saw
                looks[0] += 1

        t = threading.Thread(target=look)
        t.start()
        try:
            for i in range(12):
                action = "pause" if i % 2 == 0 else "resume"
                rollout.control(s, store, name, action)
                later = looks[0] + 3  # three whole looks after the write
                assert process.wait_for(lambda n=later: looks[0] >= n, timeout=30, interval=0.01) == "ok"
                assert (store.get(ROLLOUTS, rid) or {})["paused"] is (action == "pause"), (i, action)
        finally:
            stop.set()
            t.join()
        doc = rollout.load(store, rid)
        assert doc is not None and doc["state"] == "running" and "verdict" in doc and "evidence" in doc


def test_tally_increments_from_two_threads_all_count(stack: Settings) -> None:
    s = stack
    key = f"race-tally-{os.getpid()}-{threading.get_ident() % 10000}"
    stores = [Store.connect(s), Store.connect(s)]

    def count(store: Store) -> None:
        for _ in range(40):
            tally_inc(store, key, {"s0.challenger.requests": 1})

    threads = [threading.Thread(target=count, args=(st,)) for st in stores]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert (stores[0].get(TALLIES, key) or {})["s0"]["challenger"]["requests"] == 80
    finally:
        for st in stores:
            st.close()
