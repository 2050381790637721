"""Provenance of an answer, in one call: response -> model version and weight digest -> MLflow run ->
Airflow run -> dataset versions -> the training records most similar to what was asked.

    GET /v1/responses/{id}/lineage          lifecycle lineage RESPONSE_ID [-o json]

**Similarity index.** Built when a model is trained (``training/launch.py``), once per dataset version,
kept in Mongo ``lineage_index`` by dataset id: TF-IDF over the word unigrams and bigrams of each
training record's question (every turn before the final answer), the 64 heaviest terms of each record,
L2-normalised; a question is scored by **cosine similarity** against it through an inverted index.
Lexical on purpose: cheap to build on a CPU at training time, no model to load at lookup, and an
auditor can see why a record matched (shared words). Only the ``train`` split is indexed: it is what
the model learned from. Records are named exactly (dataset id, split, line of ``train.jsonl``, content
hash) and their text read from the dataset version itself. A record deleted since
(``lifecycle/forget.py``) is a tombstone in the dataset and leaves the index; it is never shown.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import threading
from collections import Counter, OrderedDict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from lifecycle import digests, registry
from lifecycle.names import content_hash
from lifecycle.settings import Settings
from lifecycle.store import DATASETS, INFERENCE_LOG, LINEAGE_INDEX, TRAINING_RUNS, Store, now

SIMILARITY = "tf-idf cosine, word unigrams+bigrams of the question (turns before the answer)"
MAX_TERMS = 64  # per record: the heaviest terms
CHUNK = 2000  # records per index document
TAINT_TAG = "lifecycle.tainted"  # on MLflow runs and model versions: the deletion that tainted them
AIRFLOW_DAG_TAG, AIRFLOW_RUN_TAG = "lifecycle.airflow.dag_id", "lifecycle.airflow.run_id"
_WORD = re.compile(r"\w+", re.UNICODE)


class LineageError(LookupError):
    """The response cannot be traced; the message says which link is missing."""


def terms(text: str) -> Counter[str]:
    words = _WORD.findall(text.lower())
    return Counter(words + [f"{a} {b}" for a, b in itertools.pairwise(words)])


def question_of(messages: list[dict[str, Any]]) -> str:
    return "\n".join(str(m.get("content", "")) for m in messages[:-1])


def dataset_rows(path: Path, split: str = "train") -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row) of a dataset version's split; tombstones of deleted records are skipped."""
    file = path / f"{split}.jsonl"
    if not file.exists():
        return
    with file.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if line.strip():
                row = json.loads(line)
                if "deleted" not in row:
                    yield number, row


def build_index(dataset_id: str, rows: Iterable[tuple[int, dict[str, Any]]]) -> list[dict[str, Any]]:
    """The index documents of a dataset version's train split (see the module): a header (``_id`` = the
    dataset id) and chunks of ``CHUNK`` records, each with a share of the idf table — flat arrays only
    (FerretDB stores no array directly inside an array), every document far under 16 MB."""
    entries, df = [], Counter[str]()
    for line, row in rows:
        tf = terms(question_of(row["messages"]))
        df.update(tf.keys())
        entries.append((line, content_hash(row["messages"]), tf))
    n = len(entries)
    idf = {t: math.log((1 + n) / (1 + d)) + 1.0 for t, d in df.items()}
    records: list[dict[str, Any]] = []
    for line, h, tf in entries:
        weights = sorted(((t, c * idf[t]) for t, c in tf.items()), key=lambda tw: -tw[1])[:MAX_TERMS]
        norm = math.sqrt(sum(w * w for _, w in weights)) or 1.0
        records.append({"line": line, "hash": h, "t": [t for t, _ in weights],
                        "w": [round(w / norm, 5) for _, w in weights]})  # fmt: skip
    kept = sorted({t for r in records for t in r["t"]})  # a term no record keeps never scores
    k = max(1, math.ceil(len(records) / CHUNK))
    header = {"_id": dataset_id, "similarity": SIMILARITY, "split": "train", "n": n, "chunks": k, "built_at": now()}
    chunks = [{"_id": f"{dataset_id}#{i}", "dataset": dataset_id, "records": records[i * CHUNK : (i + 1) * CHUNK],
               "idf_t": kept[i::k], "idf_v": [round(idf[t], 5) for t in kept[i::k]]} for i in range(k)]  # fmt: skip
    return [header, *chunks]


def ensure_index(store: Store, dataset_id: str, path: Path) -> bool:
    """Build and keep the index of a dataset version unless it exists; True when built now."""
    if store.db[LINEAGE_INDEX].find_one({"_id": dataset_id}, {"_id": 1}) is not None:
        return False
    header, *chunks = build_index(dataset_id, dataset_rows(path))
    for chunk in chunks:  # the header last: an index is there once it is whole
        store.db[LINEAGE_INDEX].replace_one({"_id": chunk["_id"]}, chunk, upsert=True)
    return store.insert_once(LINEAGE_INDEX, header)


class Index:
    """A loaded index: postings by term, for cosine scoring of a question."""

    def __init__(self, docs: list[dict[str, Any]]) -> None:
        chunks = [d for d in docs if "records" in d]
        self.idf = {t: v for c in chunks for t, v in zip(c["idf_t"], c["idf_v"], strict=True)}
        self.records: list[tuple[int, str]] = []
        self.postings: dict[str, list[tuple[int, float]]] = {}
        for c in sorted(chunks, key=lambda c: int(str(c["_id"]).rpartition("#")[2])):
            for r in c["records"]:
                i = len(self.records)
                self.records.append((r["line"], r["hash"]))
                for t, w in zip(r["t"], r["w"], strict=True):
                    self.postings.setdefault(t, []).append((i, w))

    def nearest(self, text: str, k: int = 5, exclude: set[str] | frozenset[str] = frozenset()) -> list[dict[str, Any]]:
        tf = terms(text)
        q = {t: c * self.idf[t] for t, c in tf.items() if t in self.idf}
        norm = math.sqrt(sum(w * w for w in q.values())) or 1.0
        scores: dict[int, float] = {}
        for t, w in q.items():
            for i, rw in self.postings.get(t, ()):
                scores[i] = scores.get(i, 0.0) + w / norm * rw
        best = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
        out = []
        for i, score in best:
            line, h = self.records[i]
            if h in exclude:
                continue
            out.append({"line": line, "content_hash": h, "similarity": round(score, 4)})
            if len(out) == k:
                break
        return out


class _Cache:
    """Loaded indexes by dataset id (immutable once built; deletions are filtered at query time)."""

    def __init__(self, size: int = 8) -> None:
        self.size, self.items, self.lock = size, OrderedDict[str, Index](), threading.Lock()

    def get(self, store: Store, dataset_id: str) -> Index | None:
        with self.lock:
            if dataset_id in self.items:
                self.items.move_to_end(dataset_id)
                return self.items[dataset_id]
        if store.db[LINEAGE_INDEX].find_one({"_id": dataset_id}, {"_id": 1}) is None:
            return None
        index = Index(list(store.db[LINEAGE_INDEX].find({"dataset": dataset_id})))
        with self.lock:
            self.items[dataset_id] = index
            while len(self.items) > self.size:
                self.items.popitem(last=False)
        return index


INDEXES = _Cache()


def _asked(log: dict[str, Any]) -> str:
    """The question of a logged answer: its last user turn, or its prompt."""
    for m in reversed(log.get("messages") or []):
        if m.get("role") == "user":
            content = m.get("content")
            if isinstance(content, list):
                return "".join(p.get("text", "") for p in content if isinstance(p, dict))
            return str(content or "")
    return str(log.get("prompt") or "")


def _read_lines(path: Path, wanted: set[int]) -> dict[int, dict[str, Any]]:
    """The rows at ``wanted`` line numbers of the train split (only those parsed; tombstones left out)."""
    out: dict[int, dict[str, Any]] = {}
    file = path / "train.jsonl"
    if not wanted or not file.exists():
        return out
    last = max(wanted)
    with file.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if number in wanted:
                row = json.loads(line)
                if "deleted" not in row:
                    out[number] = row
            if number >= last:
                break
    return out


def dataset_chain(store: Store, dataset_id: str, limit: int = 16) -> list[dict[str, Any]]:
    """The dataset version and the versions it was built from (``parents``), nearest first."""
    out: list[dict[str, Any]] = []
    todo, seen = [dataset_id], set()
    while todo and len(out) < limit:
        ds = todo.pop(0)
        if ds in seen:
            continue
        seen.add(ds)
        doc = store.get(DATASETS, ds) or {"_id": ds, "missing": True}
        out.append({"dataset_id": ds, **{k: doc.get(k) for k in ("name", "source", "train", "eval", "created_at",
                    "parents", "tainted", "deleted_records", "missing") if doc.get(k) is not None}})  # fmt: skip
        todo += list(doc.get("parents") or [])
    return out


def resolve(settings: Settings, store: Store, response_id: str, *, key_id: str = "", k: int = 5) -> dict[str, Any]:
    """The lineage of one answer (see the module). ``LineageError`` when the answer is unknown (or,
    with ``key_id``, another key's)."""
    log = store.db[INFERENCE_LOG].find_one({"_id": response_id})
    if log is None or (key_id and log.get("api_key_id", key_id) != key_id):
        raise LineageError(f"response_id {response_id!r}: no such answer in the inference log")
    question = _asked(log)
    out: dict[str, Any] = {
        "response_id": response_id, "created_at": log.get("created_at"), "question": question,
        "model": {"name": log.get("model", ""), "version": log.get("version", ""), "digest": log.get("digest", "")},
        "rollout": {k: log[k] for k in ("rollout", "arm", "stage") if log.get(k) is not None} or None,
        "similarity": SIMILARITY, "records": [],
    }  # fmt: skip
    if not log.get("version"):
        out["note"] = "answered by the base model: no fine-tuning data behind it"
        return out
    if not str(log["version"]).isdigit():  # e.g. "local": a worker serving a folder, not a registered version
        out["note"] = f"answered by version {log['version']!r}, not a registered version: no lineage in the registry"
        return out
    mc = registry.client(settings.mlflow_tracking_uri)
    mv = mc.get_model_version(log["model"], str(log["version"]))
    rec = digests.recorded(store, str(mv.run_id))
    out["model"].update({"registered_digest": rec.digest if rec else "",
                         "digest_verified": rec is not None and rec.digest == log.get("digest"),
                         "source": mv.source, "tainted": (mv.tags or {}).get(TAINT_TAG, "")})  # fmt: skip
    run = mc.get_run(str(mv.run_id))
    tags = run.data.tags
    out["mlflow_run"] = {"run_id": mv.run_id, "experiment_id": run.info.experiment_id, "status": run.info.status,
                         "git_commit": tags.get("mlflow.source.git.commit", "")}  # fmt: skip
    training_id = tags.get("lifecycle.run_id", "")
    tr = store.get(TRAINING_RUNS, training_id) if training_id else None
    out["training_run"] = {"run_id": training_id, "status": (tr or {}).get("status", ""),
                           "base_model": tags.get("base_model", "")}  # fmt: skip
    dag_id, dag_run = tags.get(AIRFLOW_DAG_TAG, ""), tags.get(AIRFLOW_RUN_TAG, "")
    out["airflow_run"] = {"dag_id": dag_id, "run_id": dag_run} if dag_run else None
    dataset_id = tags.get("dataset_id", "")
    out["datasets"] = dataset_chain(store, dataset_id) if dataset_id else []
    index = INDEXES.get(store, dataset_id) if dataset_id else None
    if index is None:
        out["note"] = f"dataset {dataset_id or '?'} has no lineage index (trained before indexes were built)"
        return out
    deleted = set(out["datasets"][0].get("deleted_records") or [])
    hits = index.nearest(question, k, exclude=deleted)
    rows = _read_lines(settings.datasets_dir / dataset_id, {h["line"] for h in hits})
    for h in hits:
        row = rows.get(h["line"])
        if row is None or content_hash(row["messages"]) != h["content_hash"]:
            continue  # deleted (a tombstone now) or the dataset folder is not readable here
        out["records"].append({"dataset_id": dataset_id, "split": "train", **h,
                               "question": question_of(row["messages"]), "answer": row["messages"][-1]["content"],
                               **({"meta": row["meta"]} if row.get("meta") else {})})  # fmt: skip
    return out
