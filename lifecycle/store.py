"""The MongoDB store (database ``lifecycle``): one place that knows collection names and indexes.

Documents are keyed by the ids the platform already has (dataset content hash, run id, event id),
so writing the same thing twice is a no-op instead of a duplicate.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pymongo import ASCENDING, DESCENDING, MongoClient
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from lifecycle.settings import Settings

DATASETS = "datasets"
TRAINING_RUNS = "training_runs"
EVALUATIONS = "evaluations"
MODEL_CONFIGS = "model_configs"
INFERENCE_LOG = "inference_log"
JOBS = "jobs"
#: Kafka intake of the training-data DAG: each message landed before its offset counts, and its claim.
TRAINING_EVENTS = "training_events"
TRAINING_EVENT_CLAIMS = "training_event_claims"
#: DAG-run and task state changes, as the Airflow listener reports them.
PIPELINE_EVENTS = "pipeline_events"
#: Rollouts of challengers (lifecycle/rollout.py) and the feedback users give on answers.
ROLLOUTS = "rollouts"
ROLLOUT_DECISIONS = "rollout_decisions"
#: What each rollout's last look saw (evidence, verdict): written every tick, so kept apart from the rollout.
ROLLOUT_LOOKS = "rollout_looks"
FEEDBACK = "feedback"
#: Running counts of each rollout's evidence, by stage and arm (lifecycle/tally.py).
TALLIES = "rollout_tallies"
#: Per dataset version, the similarity index of its training records (lifecycle/lineage.py), and the
#: record deletions with what they tainted (lifecycle/forget.py).
LINEAGE_INDEX = "lineage_index"
DELETIONS = "deletions"
#: One holder at a time for a named thing, e.g. the champion alias of a model (lifecycle/lease.py).
LEASES = "leases"

Doc = dict[str, Any]

_INDEXES: dict[str, list[tuple[list[tuple[str, int]], dict[str, Any]]]] = {
    DATASETS: [([("name", ASCENDING), ("created_at", DESCENDING)], {"name": "by_name"})],
    TRAINING_RUNS: [
        ([("status", ASCENDING), ("updated_at", DESCENDING)], {"name": "by_status"}),
        ([("mlflow_run_id", ASCENDING)], {"name": "by_mlflow_run"}),
    ],
    EVALUATIONS: [([("candidate.run_id", ASCENDING)], {"name": "by_candidate_run"})],
    INFERENCE_LOG: [
        ([("created_at", DESCENDING)], {"name": "by_time"}),
        ([("rollout", ASCENDING)], {"name": "by_rollout"}),
    ],
    ROLLOUTS: [([("model_name", ASCENDING), ("state", ASCENDING)], {"name": "by_model_state"})],
    FEEDBACK: [([("rollout", ASCENDING)], {"name": "by_rollout"})],
    ROLLOUT_DECISIONS: [([("rollout", ASCENDING), ("seq", ASCENDING)], {"name": "by_rollout"})],
    JOBS: [([("status", ASCENDING)], {"name": "by_status"})],
}


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Store:
    """Thin access to the lifecycle database; open with ``Store.connect(settings)``."""

    def __init__(self, client: MongoClient[Doc], db_name: str) -> None:
        self.client = client
        self.db: Database[Doc] = client[db_name]

    @classmethod
    def connect(cls, settings: Settings, timeout_ms: int = 5000) -> Store:
        client: MongoClient[Doc] = MongoClient(settings.mongo_uri, serverSelectionTimeoutMS=timeout_ms, tz_aware=True)
        store = cls(client, settings.mongo_db)
        store.ensure_indexes()
        return store

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ensure_indexes(self) -> None:
        for coll, indexes in _INDEXES.items():
            for keys, opts in indexes:
                self.db[coll].create_index(keys, **opts)

    def insert_once(self, collection: str, doc: Doc) -> bool:
        """Insert ``doc`` (which has an ``_id``); False when a document with that id exists already."""
        try:
            self.db[collection].insert_one(doc)
        except DuplicateKeyError:
            return False
        return True

    def get(self, collection: str, doc_id: str) -> Doc | None:
        return self.db[collection].find_one({"_id": doc_id})

    def update(self, collection: str, doc_id: str, fields: Doc, push: Doc | None = None) -> None:
        change: Doc = {"$set": {**fields, "updated_at": now()}}
        if push:
            change["$push"] = push
        self.db[collection].update_one({"_id": doc_id}, change)

    def upsert(self, collection: str, doc_id: str, change: Doc) -> None:
        """``update_one`` with upsert; when another writer created the document meanwhile (FerretDB
        answers two upserts at once with a duplicate key), applied to the one it created."""
        try:
            self.db[collection].update_one({"_id": doc_id}, change, upsert=True)
        except DuplicateKeyError:
            self.db[collection].update_one({"_id": doc_id}, change, upsert=True)

    def update_checked(self, collection: str, doc_id: str, fields: Doc, tries: int = 5) -> None:
        """``update``, read back and repeated until ``fields`` hold. FerretDB's SQLite backend applies an
        update as a read-modify-write outside any transaction: of two updates of one document at once
        (even of different fields) one is lost. MongoDB needs the one try."""
        for _ in range(tries):
            self.update(collection, doc_id, fields)
            doc = self.get(collection, doc_id)
            if doc is None or all(doc.get(k) == v for k, v in fields.items()):
                return
        raise RuntimeError(f"{collection} {doc_id}: {sorted(fields)} did not hold after {tries} writes")
