"""Rollouts: a challenger that passed the offline gate meets live traffic before it becomes champion.

One Mongo document per rollout (``rollouts``, id ``<model>:<version>``) is the truth every process
follows: the stages (``shadow`` — answers mirrored, nobody sees them — then ``canary`` shares of
users), the stage in force, the state (running, promoting, then promoted / rolled_back /
aborted) and every decision with its evidence. The gateway routes by it and records each answer with
its arm and stage in the inference log, counting it in the rollout's tallies (``lifecycle/tally.py``);
``tick`` reads those counts (and the feedback's), asks ``lifecycle.sequential.decide`` and applies
the verdict.

A decision is claimed by inserting it into ``rollout_decisions`` under ``<rollout>:<seq>``: of two
gateways (or a gateway and a CLI) deciding at once, exactly one insert succeeds (a unique ``_id`` is
the one write every MongoDB-protocol server makes atomic — FerretDB's SQLite backend does not make a
filtered update one), so nothing is decided twice. The claim carries the change it makes (state,
stage) and its event, unpublished; the change is then ``$set`` on the rollout (idempotent, and
re-applied by the next ``tick`` if a crash came between), the event published to
``lifecycle.model-events`` and marked published — an event left unpublished is published by the next
``tick`` of any process, with the same event id (followers drop duplicates by ``seq``). Pausing is a
flag beside the state, not a state change, so it never races a decision; it is written until it
holds (``Store.update_checked``), and what each ``tick`` sees is written apart (``rollout_looks``), not
on the rollout: FerretDB's SQLite backend loses one of two updates of a document at once, and a tick
every second would have overwritten an operator's pause with what it had read. Promotion moves
``champion`` (after a ``ModelPromoted`` for workers); a rollback or abort leaves ``champion`` alone and
takes ``challenger`` off the version.
"""

from __future__ import annotations

import logging
from typing import Any

from lifecycle import events, tally, topics
from lifecycle.sequential import Arm, Policy, decide
from lifecycle.settings import Settings
from lifecycle.store import MODEL_CONFIGS, ROLLOUT_DECISIONS, ROLLOUT_LOOKS, ROLLOUTS, TALLIES, Store, now
from lifecycle.v1 import events_pb2

log = logging.getLogger(__name__)
ACTIVE = ("running", "promoting")
DONE = ("promoted", "rolled_back", "aborted")


class RolloutError(RuntimeError):
    """A rollout command that cannot be carried out; the message says why."""


def stages(settings: Settings, policy: str) -> list[dict[str, Any]]:
    """The stages of a policy: ``canary`` = the canary steps; ``shadow`` = a shadow stage first."""
    if policy not in ("shadow", "canary"):
        raise RolloutError(f"rollout policy {policy!r}: a rollout is shadow or canary (direct has none)")
    steps = [{"kind": "canary", "share": round(p / 100, 4)} for p in settings.rollout_steps]
    return ([{"kind": "shadow", "share": settings.rollout_shadow_share}] if policy == "shadow" else []) + steps


def policy_of(settings: Settings) -> Policy:
    n = settings.rollout_min_requests  # per stage (challenger) and for a baseline (champion)
    return Policy(margin=settings.rollout_margin, min_requests=n, baseline=n)


def start(
    settings: Settings, store: Store, name: str, version: int, champion: int, policy: str, reason: str = ""
) -> dict[str, Any]:
    """Start (or, when it exists, return) the rollout of ``version``; an active rollout of another
    version of the model is aborted first (superseded)."""
    rid = f"{name}:{version}"
    plan = stages(settings, policy)
    for other in store.db[ROLLOUTS].find({"model_name": name, "state": {"$in": list(ACTIVE)}, "_id": {"$ne": rid}}):
        _decide(settings, store, other, "RolloutRolledBack", "aborted", f"superseded by version {version}")
    doc: dict[str, Any] = {"_id": rid, "model_name": name, "version": version, "champion": champion, "policy": policy,
           "stages": plan, "stage": 0, "state": "running", "paused": False, "seq": 0, "started_at": now(),
           "stage_started_at": now()}  # fmt: skip
    store.insert_once(ROLLOUTS, doc)
    if not (load(store, rid) or {}).get("decisions"):  # new (or a crash came before its first decision)
        doc = store.get(ROLLOUTS, rid) or doc
        first = doc["stages"][0]
        why = reason or f"{first['kind']} at {first['share']:.0%}"
        _append(settings, store, doc, "RolloutStarted", {}, why, expect_seq=0, first=True)
    return _publish_pending(settings, store, rid)


def get(store: Store, name: str, version: int | None = None) -> dict[str, Any]:
    """The rollout of ``version``, else the model's active one, else its latest."""
    rid: str | None = f"{name}:{version}"
    if version is None:
        found = store.db[ROLLOUTS].find_one({"model_name": name, "state": {"$in": list(ACTIVE)}}, {"_id": 1})
        found = found or store.db[ROLLOUTS].find_one({"model_name": name}, {"_id": 1}, sort=[("started_at", -1)])
        rid = found["_id"] if found else None
    doc = load(store, rid) if rid else None
    if doc is None:
        raise RolloutError(f"{name} has no rollout" + (f" of version {version}" if version is not None else ""))
    return doc


def load(store: Store, rid: str) -> dict[str, Any] | None:
    """The rollout with its decisions (``decisions``, by ``seq``), a change a crash left unapplied applied."""
    doc = store.get(ROLLOUTS, rid)
    if doc is None:
        return None
    doc = with_looks(store, [doc])[0]
    doc["decisions"] = list(store.db[ROLLOUT_DECISIONS].find({"rollout": rid}, sort=[("seq", 1)]))
    last = doc["decisions"][-1] if doc["decisions"] else None
    if last is not None and last["seq"] > doc["seq"]:
        _apply(store, rid, last)
        doc.update({**last.get("change", {}), "seq": last["seq"]})
    return doc


def with_looks(store: Store, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rollouts with what their last look saw (``evidence``, ``verdict``; the rollout's own verdict,
    when it has one, wins)."""
    looks = {d["_id"]: d for d in store.db[ROLLOUT_LOOKS].find({"_id": {"$in": [d["_id"] for d in docs]}})}
    return [{**{k: v for k, v in looks.get(d["_id"], {}).items() if k in ("evidence", "verdict")}, **d} for d in docs]


def view(doc: dict[str, Any]) -> dict[str, Any]:
    """A rollout as the API and the CLI show it (the stored events left out)."""
    stage = doc["stages"][doc["stage"]]
    decisions = [{k: d[k] for k in ("seq", "type", "stage", "share", "reason", "published")} | {"at": str(d["at"])}
                 for d in doc.get("decisions", [])]  # fmt: skip
    return {"id": doc["_id"], "model": doc["model_name"], "version": doc["version"], "champion": doc["champion"],
            "policy": doc["policy"],
            "state": "paused" if doc.get("paused") and doc["state"] == "running" else doc["state"],
            "stage": stage["kind"], "share": stage["share"],
            "stages": doc["stages"], "verdict": doc.get("verdict", ""), "evidence": doc.get("evidence", {}),
            "decisions": decisions}  # fmt: skip


def evidence(store: Store, doc: dict[str, Any], baseline: int) -> tuple[Arm, Arm, int]:
    """(challenger, champion, challenger answers since the stage began) from the rollout's tallies
    (``lifecycle/tally.py``: the answers and the feedback on them, counted as they were written).
    With fewer than ``baseline`` champion answers in the rollout, its answers outside rollouts count too."""
    challenger, champion, stage_n = tally.arms(store.get(TALLIES, doc["_id"]), int(doc["stage"]))
    if champion.requests < baseline:  # few in the rollout (a 100 % stage first): its answers before it too
        history = store.get(TALLIES, tally.version_key(doc["model_name"], doc["champion"])) or {}
        tally.add(champion, history.get("all") or {})
    return challenger, champion, stage_n


def tick(settings: Settings, store: Store, models: list[str] | None = None) -> list[str]:
    """Look at every active rollout (of ``models``) once and apply what the evidence decides; returns
    what was decided."""
    out = []
    policy = policy_of(settings)
    query: dict[str, Any] = {"state": {"$in": list(ACTIVE)}}
    if models is not None:
        query["model_name"] = {"$in": models}
    for found in list(store.db[ROLLOUTS].find(query, {"_id": 1})):
        doc = _publish_pending(settings, store, found["_id"])
        if doc["state"] not in ACTIVE:  # a decision a crash left unapplied ended it
            continue
        if doc["state"] == "promoting":
            _finish_promotion(settings, store, doc)
            out.append(f"{doc['_id']}: promoted")
            continue
        challenger, champion, stage_n = evidence(store, doc, policy.baseline)
        verdict = decide(challenger, champion, stage_n, policy)
        seen = {"challenger": challenger.summary(), "champion": champion.summary(), "tests": verdict.tests}
        look = {"evidence": seen, "verdict": verdict.reason, "updated_at": now()}
        store.upsert(ROLLOUT_LOOKS, doc["_id"], {"$set": look})
        if verdict.action == "rollback":
            if _decide(settings, store, doc, "RolloutRolledBack", "rolled_back", verdict.reason, seen):
                out.append(f"{doc['_id']}: rolled back ({verdict.reason})")
        elif verdict.action == "step" and not doc.get("paused") and step(settings, store, doc, verdict.reason, seen):
            out.append(f"{doc['_id']}: stepped ({verdict.reason})")
    return out


def step(settings: Settings, store: Store, doc: dict[str, Any], reason: str, seen: dict[str, Any]) -> bool:
    """The next stage, or promotion after the last one."""
    if doc["stage"] + 1 >= len(doc["stages"]):
        return promote(settings, store, doc, reason, seen)
    return _append(settings, store, doc, "RolloutStepped", seen, reason, expect_seq=doc["seq"],
                   change={"stage": doc["stage"] + 1, "stage_started_at": now()})  # fmt: skip


def promote(settings: Settings, store: Store, doc: dict[str, Any], reason: str, seen: dict[str, Any]) -> bool:
    if doc.get("tainted"):  # trained on a deleted record (lifecycle/forget.py): never champion
        abort_tainted(settings, store, doc["_id"], str(doc["tainted"]))
        return False
    if not _append(settings, store, doc, "RolloutPromoted", seen, reason, expect_seq=doc["seq"],
                   change={"state": "promoting"}):  # fmt: skip
        return False
    _finish_promotion(settings, store, _publish_pending(settings, store, doc["_id"]))
    return True


def abort_tainted(settings: Settings, store: Store, rid: str, deletion: str) -> bool:
    """Roll back a running rollout whose challenger was trained on a deleted record; False when it had
    already ended (or is finishing its promotion)."""
    doc = load(store, rid)
    if doc is None or doc["state"] != "running":
        return False
    return _decide(settings, store, doc, "RolloutRolledBack", "rolled_back",
                   f"challenger tainted: trained on a record deleted by {deletion}")  # fmt: skip


def control(settings: Settings, store: Store, name: str, action: str, version: int | None = None) -> dict[str, Any]:
    """``pause`` (hold the share, decide nothing but a rollback), ``resume``, ``abort`` (roll back now),
    ``promote`` (finish now) — as the CLI and the admin API ask."""
    doc = get(store, name, version)
    if doc["state"] not in ACTIVE:
        raise RolloutError(f"rollout {doc['_id']} is {doc['state']}; nothing to {action}")
    if action in ("pause", "resume"):
        pause = action == "pause"
        if doc["state"] != "running" or bool(doc.get("paused")) == pause:
            raise RolloutError(f"rollout {doc['_id']} is {view(doc)['state']}; nothing to {action}")
        store.update_checked(ROLLOUTS, doc["_id"], {"paused": pause})
    elif action == "abort":
        if not _decide(settings, store, doc, "RolloutRolledBack", "aborted", "aborted by an operator"):
            raise RolloutError(f"rollout {doc['_id']} changed meanwhile; look again")
    elif action == "promote":
        if doc.get("tainted"):
            raise RolloutError(
                f"rollout {doc['_id']}: v{doc['version']} is tainted ({doc['tainted']}); it cannot be promoted"
            )
        if doc["state"] != "promoting" and not promote(settings, store, doc, "promoted by an operator", {}):
            raise RolloutError(f"rollout {doc['_id']} changed meanwhile; look again")
    else:
        raise RolloutError(f"unknown action {action!r}: pause, resume, abort or promote")
    return get(store, name, doc["version"])


def _decide(settings: Settings, store: Store, doc: dict[str, Any], kind: str, state: str, reason: str,
            seen: dict[str, Any] | None = None) -> bool:  # fmt: skip
    ok = _append(settings, store, doc, kind, seen or {}, reason, expect_seq=doc["seq"], change={"state": state})
    if ok:
        _publish_pending(settings, store, doc["_id"])
        _untag_challenger(settings, doc)
    return ok


def _append(settings: Settings, store: Store, doc: dict[str, Any], kind: str, seen: dict[str, Any], reason: str,
            *, expect_seq: int, change: dict[str, Any] | None = None, first: bool = False) -> bool:  # fmt: skip
    """Claim decision ``kind`` as the rollout's next (``expect_seq + 1``, or 0 for the first): True when
    this call made it (the caller publishes), False when someone else decided that step first."""
    seq = 0 if first else expect_seq + 1
    change = {**(change or {})}
    new = {**doc, **change}
    stage = new["stages"][new["stage"]]
    event = events.new_event(
        getattr(events_pb2, kind), event_id=f"{doc['_id']}:{seq}", model_name=doc["model_name"],
        version=doc["version"], champion_version=doc["champion"], rollout_id=doc["_id"], policy=doc["policy"],
        seq=seq, stage=stage["kind"], share=1.0 if kind == "RolloutPromoted" else stage["share"], reason=reason,
        evidence=_plain(seen),
    )  # fmt: skip
    decision = {"_id": f"{doc['_id']}:{seq}", "rollout": doc["_id"], "seq": seq, "type": kind, "stage": stage["kind"],
                "share": stage["share"], "reason": reason, "change": change,
                "event_json": events.encode(event).decode(), "published": False, "at": now()}  # fmt: skip
    if not store.insert_once(ROLLOUT_DECISIONS, decision):
        return False
    _apply(store, doc["_id"], decision)
    log.info("rollout %s: %s (%s)", doc["_id"], kind, reason)
    return True


def _apply(store: Store, rid: str, decision: dict[str, Any]) -> None:
    """A claimed decision's change on the rollout (the same values however often it is applied)."""
    change = {**decision.get("change", {}), "seq": decision["seq"], "updated_at": now()}
    store.db[ROLLOUTS].update_one({"_id": rid, "seq": {"$lte": decision["seq"]}}, {"$set": change})


def _publish_pending(settings: Settings, store: Store, rid: str) -> dict[str, Any]:
    doc = load(store, rid)
    assert doc is not None
    for d in doc["decisions"]:
        if not d["published"]:
            events.publish_raw(settings, topics.MODEL_EVENTS, doc["model_name"], d["event_json"].encode())
            store.db[ROLLOUT_DECISIONS].update_one({"_id": d["_id"]}, {"$set": {"published": True}})
            d["published"] = True
            _tag(settings, doc, d)
    return doc


def _finish_promotion(settings: Settings, store: Store, doc: dict[str, Any]) -> None:
    """Workers first (``ModelPromoted``, fixed id: repeats are dropped), then the alias and the history."""
    from lifecycle import champion, registry

    name, version = doc["model_name"], doc["version"]
    promoted = events.new_event(
        events_pb2.ModelPromoted, event_id=f"{doc['_id']}:promoted", model_name=name, version=version,
        alias=registry.CHAMPION, previous_version=doc["champion"], reason=f"rollout {doc['_id']}",
    )  # fmt: skip
    try:  # the alias moves only from the champion the rollout compared against (lifecycle/champion.py)
        champion.move(settings, store, name, version, expected=doc["champion"],
                      before=lambda: events.publish(settings, topics.MODEL_EVENTS, name, promoted))  # fmt: skip
    except champion.AliasMoved as exc:
        log.warning("rollout %s: not promoted: %s", doc["_id"], exc)
        gone = {"$set": {"state": "aborted", "verdict": f"{exc} (it moved while the rollout ran)", "updated_at": now()}}
        store.db[ROLLOUTS].update_one({"_id": doc["_id"], "state": "promoting"}, gone)
        return
    _untag_challenger(settings, doc)
    history = (store.get(MODEL_CONFIGS, name) or {}).get("champions", [])
    if not history or history[-1].get("version") != version:
        store.db[MODEL_CONFIGS].update_one(
            {"_id": name}, {"$push": {"champions": {"version": version, "at": now(), "event_id": promoted.event_id}}},
            upsert=True,
        )  # fmt: skip
    done = {"$set": {"state": "promoted", "promoted_at": now(), "updated_at": now()}}
    store.db[ROLLOUTS].update_one({"_id": doc["_id"], "state": "promoting"}, done)


def _untag_challenger(settings: Settings, doc: dict[str, Any]) -> None:
    from lifecycle import registry

    mc = registry.client(settings.mlflow_tracking_uri)
    current = registry.version_by_alias(mc, doc["model_name"], registry.CHALLENGER)
    if current is not None and int(current.version) == doc["version"]:
        mc.delete_registered_model_alias(doc["model_name"], registry.CHALLENGER)


def _tag(settings: Settings, doc: dict[str, Any], decision: dict[str, Any]) -> None:
    """The decision on the MLflow model version too (best effort: Mongo holds the record)."""
    from lifecycle import registry

    try:
        mc = registry.client(settings.mlflow_tracking_uri)
        v = str(doc["version"])
        mc.set_model_version_tag(doc["model_name"], v, "lifecycle.rollout.last", decision["type"])
        mc.set_model_version_tag(doc["model_name"], v, "lifecycle.rollout.reason", decision["reason"][:5000])
        mc.set_model_version_tag(doc["model_name"], v, "lifecycle.rollout.share", str(decision["share"]))
    except Exception as exc:  # noqa: BLE001 - the registry being away must not undo a published decision
        log.warning("rollout %s: MLflow tags not set: %s", doc["_id"], exc)


def _plain(value: Any) -> Any:
    """Evidence as JSON-safe values (a Struct holds numbers as doubles, keys as strings)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
