"""The gateway's side of a rollout (lifecycle/rollout.py): which version answers a request, which
requests are mirrored to the challenger, and the controller's ``tick``, all from the rollout
documents in Mongo, read by a thread every ``interval`` — never on the request path. A gateway that
restarts reads the same documents and routes as before (the stage in force, the same users). The
evidence is looked at for the models this gateway's workers serve only, every ``DECIDE_MIN_S`` at
most and never more than 1/``DECIDE_COST`` of the time (a look reads the rollout's tallies, one
document by id: cheap, but every gateway looks).

A user is assigned by a hash of the rollout id and the user (the ``user`` field, else the API key,
else the client address) into [0, 1): answered by the challenger while below the stage's share, so
the users of a 5 % step stay in at 25 % (sticky), and another rollout draws other users."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from lifecycle import rollout
from lifecycle.background import Background
from lifecycle.names import split_model_ref
from lifecycle.settings import Settings
from lifecycle.store import ROLLOUTS, Store, now

log = logging.getLogger(__name__)
#: A promoted challenger is asked for by number until every worker serves it, this long at most.
PROMOTED_FOLLOW_S = 600.0
DECIDE_MIN_S = 2.0  # seconds between decision looks, at least
DECIDE_COST = 10  # ... and at least this many times what the last look took


@dataclass(frozen=True)
class Route:
    """An active rollout as the gateway follows it."""

    rollout: str
    model: str
    version: int
    stage: str  # shadow | canary | promoted (answered by the new champion until every worker serves it)
    share: float
    step: int = 0  # the stage's index: answers are counted by it


@dataclass(frozen=True)
class Plan:
    """What a request is: its rollout, its arm (champion | challenger), the model the worker is asked
    for, and the model to mirror it to (shadow) when it is mirrored."""

    rollout: str
    arm: str
    model: str
    shadow: str | None = None
    stage: int = 0

    def fields(self) -> dict[str, Any]:
        """What an inference-log record of the request says of its rollout."""
        return {"rollout": self.rollout, "arm": self.arm, "stage": self.stage}


def bucket(*parts: str) -> float:
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class Rollouts:
    def __init__(self, settings: Settings, interval: float = 1.0, decide: bool = True) -> None:
        self.settings, self.interval, self.decide = settings, interval, decide
        self.routes: dict[str, Route] = {}
        self.background = Background("rollouts", self._run)
        self.start, self.stop = self.background.start, self.background.stop
        #: versions served now per model, as the pool last saw them (set by the app): a promoted
        #: challenger keeps being asked for by number until every worker serves it.
        self.served: Any = lambda model: set()
        self.models: Any = lambda: None  # the model names served (set by the app); None: every model

    def plan(self, model: str, user: str, request_id: str) -> Plan | None:
        """The rollout's say on a request for ``model`` (only a plain model name: a request naming a
        version or alias gets what it named)."""
        name, ref = split_model_ref(model)
        route = self.routes.get(name)
        if route is None or ref:
            return None
        challenger, n = f"{name}@{route.version}", route.step
        if route.stage == "promoted":
            served = self.served(name) - {str(route.version)}
            return Plan(route.rollout, "challenger", challenger, stage=n) if served else None
        if route.stage == "canary" and bucket(route.rollout, user) < route.share:
            return Plan(route.rollout, "challenger", challenger, stage=n)
        if route.stage == "shadow" and bucket(route.rollout, "shadow", request_id) < route.share:
            return Plan(route.rollout, "champion", name, shadow=challenger, stage=n)
        return Plan(route.rollout, "champion", name, stage=n)

    def _run(self) -> None:
        store: Store | None = None
        next_look = 0.0
        while not self.background.stopping.wait(self.interval):
            try:
                store = store or Store.connect(self.settings)
                if self.decide and time.monotonic() >= next_look:
                    t0 = time.monotonic()
                    for line in rollout.tick(self.settings, store, self.models()):
                        log.info("rollout decision: %s", line)
                    spent = time.monotonic() - t0
                    next_look = time.monotonic() + max(DECIDE_MIN_S, DECIDE_COST * spent)
                self.routes = self._read(store)
            except Exception as exc:  # noqa: BLE001 - routing keeps its last view; the next round retries
                log.warning("rollouts: %s", exc)
                if store is not None:
                    store.close()
                store = None
        if store is not None:
            store.close()

    def _read(self, store: Store) -> dict[str, Route]:
        routes: dict[str, Route] = {}
        recent = now() - dt.timedelta(seconds=PROMOTED_FOLLOW_S)
        active = {"state": {"$in": list(rollout.ACTIVE)}}
        query = {"$or": [active, {"state": "promoted", "promoted_at": {"$gte": recent}}]}
        for doc in store.db[ROLLOUTS].find(query, sort=[("started_at", 1)]):
            if doc["state"] in ("promoting", "promoted"):
                stage, share = "promoted", 1.0
                if doc["state"] == "promoted" and not self.served(doc["model_name"]) - {str(doc["version"])}:
                    continue  # every worker serves it as champion now
            else:
                current = doc["stages"][doc["stage"]]
                stage, share = current["kind"], float(current["share"])
            routes[doc["model_name"]] = Route(doc["_id"], doc["model_name"], int(doc["version"]), stage, share,
                                              int(doc["stage"]))  # fmt: skip
        return routes
