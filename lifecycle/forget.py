"""Deletion that propagates: a training record deleted everywhere the platform keeps it, and every
model that learned from it marked.

    lifecycle forget CONTENT_HASH --reason "GDPR request 1142"        (operator)
    DELETE /v1/records/{content_hash}   {"reason": "..."}              (admin key)

A record is named by its content hash (``lifecycle lineage`` shows it for the records behind an answer).
What happens, in this order, each step safe to repeat (the deletion id is derived from the hash, so
re-running a deletion that stopped half-way finishes it):

1. Every dataset version under the datasets dir that holds the record gets a **tombstone** in its
   place (``{"deleted": DELETION_ID, "content_hash": …}``: line numbers stay, the content is gone);
   the version is marked ``tainted`` in Mongo ``datasets`` and the record leaves its lineage index.
   Answers and feedback the record was curated from (``meta.response_id``) are deleted too, and the
   record is taken out of the Kafka intake's landed payloads (Mongo ``training_events``). The copy in
   the Kafka topic itself stays until the topic's retention removes it (Kafka deletes no single message).
2. Every MLflow run whose ``dataset_id`` is one of those versions, and every registered model version
   made from such a run, is tagged ``lifecycle.tainted = DELETION_ID`` (Mongo ``training_runs`` too).
   A tainted version can no longer be promoted (``training/promote.py``); an active rollout of a
   tainted challenger is rolled back.
3. A tainted **champion** is replaced: a ``TrainingDataArrived`` event with ``base_dataset`` (what is
   left of its dataset) starts the lifecycle DAG — ingest -> train -> gate -> rollout, like any
   event. Against a tainted champion the gate asks for non-inferiority within ``LIFECYCLE_TAINT_MARGIN``
   instead of an improvement.
4. ``ModelTainted`` per version on ``lifecycle.model-events`` and ``RecordDeleted`` on
   ``lifecycle.pipeline-events``; the deletion and its consequences are kept in Mongo ``deletions``.

Weights are not edited: a model that learned the record keeps what it learned until it is replaced.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from lifecycle import events, registry, rollout, topics
from lifecycle.lineage import TAINT_TAG
from lifecycle.names import content_hash
from lifecycle.settings import Settings
from lifecycle.store import (
    DATASETS,
    DELETIONS,
    FEEDBACK,
    INFERENCE_LOG,
    LINEAGE_INDEX,
    ROLLOUTS,
    TRAINING_EVENTS,
    TRAINING_RUNS,
    Store,
    now,
)
from lifecycle.v1 import events_pb2

_HASH = re.compile(r"^[0-9a-f]{64}$")


class ForgetError(LookupError):
    """The deletion cannot be done; the message names what was wrong."""


def deletion_id(record_hash: str) -> str:
    return "del-" + hashlib.sha256(record_hash.encode()).hexdigest()[:16]


def _tombstone(path: Path, record_hash: str, did: str) -> tuple[list[int], list[str]]:
    """Replace the record's lines in one split file; (line numbers, response ids it was curated from)."""
    if not path.exists():
        return [], []
    lines, hit, sources = path.read_text(encoding="utf-8").splitlines(keepends=True), [], []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        row = json.loads(line)
        if "deleted" not in row and content_hash(row["messages"]) == record_hash:
            hit.append(i + 1)
            if (row.get("meta") or {}).get("response_id"):
                sources.append(str(row["meta"]["response_id"]))
            lines[i] = json.dumps({"deleted": did, "content_hash": record_hash}) + "\n"
    if hit:
        tmp = path.with_name(path.name + ".forget")
        tmp.write_text("".join(lines), encoding="utf-8")
        tmp.replace(path)
    return hit, sources


def _scrub_datasets(settings: Settings, store: Store, record_hash: str, did: str) -> tuple[list[str], list[str]]:
    """Step 1 (see the module): the dataset versions that held the record, and its source answers."""
    held, sources = set(), []
    for folder in sorted(p for p in settings.datasets_dir.glob("*") if (p / "train.jsonl").exists()):
        for split in ("train", "eval"):
            hit, src = _tombstone(folder / f"{split}.jsonl", record_hash, did)
            if hit:
                held.add(folder.name)
                sources += src
    held |= {d["_id"] for d in store.db[DATASETS].find({"deleted_records": record_hash}, {"_id": 1})}
    for ds in sorted(held):
        doc = store.get(DATASETS, ds) or {}
        deleted = sorted({*doc.get("deleted_records", []), record_hash})
        store.db[DATASETS].update_one({"_id": ds}, {"$set": {"deleted_records": deleted, "tainted": True,
                                                             "updated_at": now()}}, upsert=True)  # fmt: skip
        for chunk in store.db[LINEAGE_INDEX].find({"dataset": ds}):
            if any(r["hash"] == record_hash for r in chunk["records"]):
                # read-modify-write: FerretDB 1.x does not apply $pull with a condition document
                kept = [r for r in chunk["records"] if r["hash"] != record_hash]
                store.db[LINEAGE_INDEX].update_one({"_id": chunk["_id"]}, {"$set": {"records": kept}})
    if sources:
        store.db[INFERENCE_LOG].delete_many({"_id": {"$in": sources}})
        store.db[FEEDBACK].delete_many({"_id": {"$in": sources}})
    return sorted(held), sources


def _scrub_events(store: Store, record_hash: str, did: str) -> int:
    """The record taken out of the Kafka intake's landed payloads (Mongo ``training_events``: inline
    records of ``TrainingDataArrived`` events, kept for redelivery). Chat-format records only: another
    format is normalised by ingest and not recognised here. Returns the payloads changed."""
    changed = 0
    for doc in store.db[TRAINING_EVENTS].find({}, {"payload": 1}):
        try:
            data = json.loads(doc.get("payload") or "")
        except ValueError:
            continue
        records = data.get("records") if isinstance(data, dict) else None
        if not isinstance(records, list):
            continue
        kept = [r for r in records if not (isinstance(r, dict) and isinstance(r.get("messages"), list)
                                           and content_hash(r["messages"]) == record_hash)]  # fmt: skip
        if len(kept) != len(records):
            data["records"] = kept
            store.db[TRAINING_EVENTS].update_one({"_id": doc["_id"]}, {"$set": {"payload": json.dumps(data),
                                                                                "scrubbed": did}})  # fmt: skip
            changed += 1
    return changed


def _tainted_runs(settings: Settings, datasets: list[str], did: str) -> list[Any]:
    """Step 2, runs: every MLflow run (of any experiment) trained on one of ``datasets``."""
    mc = registry.client(settings.mlflow_tracking_uri)
    experiments = [e.experiment_id for e in mc.search_experiments()]
    runs: list[Any] = []
    for ds in datasets:  # MLflow's search takes IN for run attributes, not for tags
        for start in range(0, len(experiments), 100):
            runs += mc.search_runs(experiments[start : start + 100], f"tags.dataset_id = '{ds}'", max_results=5000)
    for run in runs:
        if run.data.tags.get(TAINT_TAG) != did:
            mc.set_tag(run.info.run_id, TAINT_TAG, did)
    return runs


def forget(settings: Settings, store: Store, record_hash: str, *, reason: str, actor: str = "") -> dict[str, Any]:
    """Delete the record with content hash ``record_hash`` and taint what learned from it (see the
    module). ``ForgetError`` when the hash is malformed or no dataset version ever held it."""
    record_hash = record_hash.strip().lower()
    if not _HASH.match(record_hash):
        raise ForgetError(f"content_hash {record_hash[:80]!r}: expected 64 hex digits (sha256 of the record's "
                          "messages, as `lifecycle lineage` shows it)")  # fmt: skip
    if not reason.strip():
        raise ForgetError("reason: say why the record is deleted (kept with the deletion, for the audit)")
    did = deletion_id(record_hash)
    datasets, sources = _scrub_datasets(settings, store, record_hash, did)
    events_scrubbed = _scrub_events(store, record_hash, did)
    if not datasets:
        raise ForgetError(f"content_hash {record_hash}: no dataset version under {settings.datasets_dir} holds it")
    store.db[DELETIONS].update_one(
        {"_id": did},
        {"$set": {"content_hash": record_hash, "reason": reason, "actor": actor, "datasets": datasets,
                  "sources": sources, "state": "scrubbed", "updated_at": now()}, "$setOnInsert": {"created_at": now()}},
        upsert=True,
    )  # fmt: skip
    runs = _tainted_runs(settings, datasets, did)
    run_ids = {r.info.run_id for r in runs}
    store.db[TRAINING_RUNS].update_many({"mlflow_run_id": {"$in": sorted(run_ids)}}, {"$set": {"tainted": did}})
    mc = registry.client(settings.mlflow_tracking_uri)
    versions = []
    for run_id in sorted(run_ids):
        for mv in mc.search_model_versions(f"run_id = '{run_id}'"):
            if (mv.tags or {}).get(TAINT_TAG) != did:
                mc.set_model_version_tag(mv.name, mv.version, TAINT_TAG, did)
                mc.set_model_version_tag(mv.name, mv.version, "lifecycle.tainted_reason", reason[:500])
            versions.append(mv)
    out: dict[str, Any] = {
        "deletion_id": did, "content_hash": record_hash, "datasets": datasets, "runs": sorted(run_ids),
        "model_versions": [], "retrain_events": [], "rolled_back": [], "sources_deleted": len(sources),
        "events_scrubbed": events_scrubbed,
    }  # fmt: skip
    tainted_events = []
    for mv in versions:
        name, number = mv.name, int(mv.version)
        champion = registry.version_by_alias(mc, name, registry.CHAMPION)
        alias = "champion" if champion is not None and int(champion.version) == number else ""
        retrain = ""
        if alias:
            retrain = _retrain(settings, store, mc, mv, did)
            out["retrain_events"].append(retrain)
        out["rolled_back"] += _stop_rollouts(settings, store, name, number, did)
        out["model_versions"].append(f"{name}@{number}")
        tainted_events.append((name, events.new_event(
            events_pb2.ModelTainted, event_id=f"{did}:{name}@{number}", model_name=name, version=number,
            deletion_id=did, run_id=mv.run_id, alias=alias, retrain_event_id=retrain,
        )))  # fmt: skip
    for name, event in tainted_events:
        events.publish(settings, topics.MODEL_EVENTS, name, event)
    done = events.new_event(events_pb2.RecordDeleted, event_id=did, deletion_id=did, content_hash=record_hash,
                            reason=reason, datasets=datasets, runs=out["runs"], model_versions=out["model_versions"],
                            retrain_events=out["retrain_events"])  # fmt: skip
    events.publish(settings, topics.PIPELINE_EVENTS, "deletions", done)
    store.update(DELETIONS, did, {"state": "published", **{k: out[k] for k in ("runs", "model_versions",
                                  "retrain_events", "rolled_back")}})  # fmt: skip
    return out


def _retrain(settings: Settings, store: Store, mc: Any, mv: Any, did: str) -> str:
    """Step 3: the event that retrains a tainted champion on what is left of its dataset."""
    tags = mc.get_run(str(mv.run_id)).data.tags
    base = tags.get("dataset_id", "")
    name = (store.get(DATASETS, base) or {}).get("name", "dataset")
    # The same recipe: the champion's registered name and base model, named in the event where the
    # operator lets events set them (LIFECYCLE_EVENT_PARAMS), and where they differ from the settings'
    # (the base model: unless it is the cached default) — an event the DAG then refuses, loudly, if not allowed.
    allowed = set(settings.event_params)
    named = "model_name" in allowed or mv.name != settings.model_name
    params: dict[str, str] = {"model_name": mv.name} if named else {}
    base_model = tags.get("base_model", "")
    cached = Path(base_model).expanduser().resolve().is_relative_to(settings.models_dir.expanduser().resolve())
    if base_model and ("base_model" in allowed or (base_model != settings.base_model and not cached)):
        params["base_model"] = base_model
    event_id = f"{did}:retrain:{mv.name}"
    event = events.new_event(events_pb2.TrainingDataArrived, event_id=event_id, dataset=name, base_dataset=base,
                             params=params)  # fmt: skip
    events.publish(settings, topics.TRAINING_DATA, name, event)
    return event_id


def _stop_rollouts(settings: Settings, store: Store, name: str, version: int, did: str) -> list[str]:
    """Roll back an active rollout of a tainted challenger (a tainted champion's rollout: its challenger
    is clean, the rollout goes on)."""
    stopped = []
    for doc in store.db[ROLLOUTS].find(
        {"model_name": name, "version": version, "state": {"$in": list(rollout.ACTIVE)}}
    ):
        store.update_checked(ROLLOUTS, doc["_id"], {"tainted": did})
        if rollout.abort_tainted(settings, store, doc["_id"], did):
            stopped.append(doc["_id"])
    return stopped


def tainted_by(settings: Settings, store: Store, name: str, version: int | str, run_id: str = "") -> str:
    """The deletion that tainted a model version (or its run, or the run's dataset), else ""."""
    mc = registry.client(settings.mlflow_tracking_uri)
    mv = mc.get_model_version(name, str(version))
    if (mv.tags or {}).get(TAINT_TAG):
        return str(mv.tags[TAINT_TAG])
    run = mc.get_run(run_id or str(mv.run_id))
    if run.data.tags.get(TAINT_TAG):
        return str(run.data.tags[TAINT_TAG])
    ds = store.get(DATASETS, run.data.tags.get("dataset_id", "")) or {}
    return deletion_id(ds["deleted_records"][0]) if ds.get("tainted") and ds.get("deleted_records") else ""
