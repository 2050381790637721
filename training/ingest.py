"""Ingest: records in chat, instruction or prompt-completion shape -> a versioned dataset under the state dir.

    lifecycle ingest data/toy/train.jsonl --eval-file data/toy/eval.jsonl --name toy
    lifecycle ingest s3://bucket/support-tickets/ --name tickets     # a folder of JSONL/JSON/Parquet

Sources are read by ``training/sources.py`` (local path, ``file://`` or an object-store URI; a file
or a folder). Each record is validated (format, roles, empty content, length after the chat
template); a bad record is rejected with its file, line (or row) and reason and the rest goes
through. Exact duplicates are dropped by content hash. Without ``--eval-file`` the eval split is
taken from the records by a seeded hash of their content, so appending records never moves an
existing one across. The dataset id is the hash of what was kept: ingesting the same content twice
gives the same id, the same folder and no second Mongo document. Lineage (source, counts, rejected
lines) goes to Mongo ``datasets``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from training.records import Record, RecordError, is_eval, parse_record
from training.sources import DEFAULT_MAX_BYTES, Item, SourceError, location, read_items


class IngestError(ValueError):
    """Nothing usable was ingested; the message says why."""


@dataclass
class Rejected:
    line: int
    reason: str
    source: str = "train"
    file: str = ""

    @property
    def where(self) -> str:
        return f"{self.source} {location(self.file, self.line)}"


@dataclass
class Dataset:
    id: str
    name: str
    path: Path
    train: int
    eval: int
    duplicates: int
    rejected: list[Rejected] = field(default_factory=list)
    created: bool = True

    def summary(self) -> dict[str, Any]:
        return {
            "dataset_id": self.id,
            "name": self.name,
            "train": self.train,
            "eval": self.eval,
            "duplicates": self.duplicates,
            "rejected": len(self.rejected),
        }


def read_lines(source: str | Path | Iterable[str], max_bytes: int = DEFAULT_MAX_BYTES) -> Iterator[Item]:
    """Items of a path or URI (a file or a folder, see training/sources.py) or of lines (stdin)."""
    if isinstance(source, str | Path):
        try:
            yield from read_items(str(source), max_bytes)
        except SourceError as exc:
            raise IngestError(str(exc)) from None
        return
    for number, text in enumerate(source, start=1):
        if text.strip():
            yield Item("", number, text)


def validate(
    lines: Iterable[Item | tuple[int, str | dict[str, Any]]],
    token_count: Callable[[Record], int] | None,
    max_seq_len: int,
    source: str = "train",
) -> tuple[list[Record], list[Rejected], int]:
    """Valid unique records, rejected lines, and the number of duplicates dropped."""
    kept: list[Record] = []
    rejected: list[Rejected] = []
    seen: set[str] = set()
    duplicates = 0
    for entry in lines:
        item = entry if isinstance(entry, Item) else Item("", entry[0], entry[1])
        try:
            record = parse_record(item.raw)
            if token_count is not None and (n := token_count(record)) > max_seq_len:
                raise RecordError(f"{n} tokens after the chat template, over max_seq_len={max_seq_len}")
        except RecordError as exc:
            rejected.append(Rejected(item.line, str(exc), source, item.file))
            continue
        if record.content_hash in seen:
            duplicates += 1
            continue
        seen.add(record.content_hash)
        kept.append(record)
    return kept, rejected, duplicates


def chat_token_counter(tokenizer: Any) -> Callable[[Record], int]:
    def count(record: Record) -> int:
        ids = tokenizer.apply_chat_template(record.messages, tokenize=True, return_dict=False)
        return len(ids)

    return count


def split(records: list[Record], eval_fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    train = [r for r in records if not is_eval(r.content_hash, eval_fraction, seed)]
    evaluation = [r for r in records if is_eval(r.content_hash, eval_fraction, seed)]
    return train, evaluation


def dataset_id(train: list[Record], evaluation: list[Record]) -> str:
    """Hash of the kept content: each record's conversation and, where it has one, its short
    ``answer`` (which decides how evaluation scores it: the same questions with and without answers
    are two datasets)."""
    digest = hashlib.sha256()
    for side, records in (("train", train), ("eval", evaluation)):
        for h in sorted(_identity(r) for r in records):
            digest.update(f"{side}:{h}\n".encode())
    return "ds-" + digest.hexdigest()[:16]


def _identity(r: Record) -> str:
    answer = r.meta.get("answer")
    if answer in (None, ""):
        return r.content_hash
    return f"{r.content_hash}:{hashlib.sha256(str(answer).encode()).hexdigest()[:16]}"


def write_dataset(
    root: Path,
    name: str,
    source: str,
    train: list[Record],
    evaluation: list[Record],
    rejected: list[Rejected],
    duplicates: int,
) -> Dataset:
    """Write ``root/<id>/{train,eval}.jsonl`` + ``manifest.json``; idempotent for equal content."""
    ds_id = dataset_id(train, evaluation)
    path = root / ds_id
    ds = Dataset(ds_id, name, path, len(train), len(evaluation), duplicates, rejected)
    if (path / "manifest.json").exists():
        found = dataset_id(load_split(path, "train"), load_split(path, "eval"))
        if found == ds_id:
            ds.created = False
            return ds
        # Written under an older id rule (answers were not part of the id): keep it under the id it
        # has now, and write this content under its own.
        moved = root / found
        path.rename(moved if not moved.exists() else root / f".{ds_id}.superseded-{found}")
    # A folder of its own per writer: two ingests of the same content at once (two events, a retry)
    # each write whole, and the first rename wins; the other finds the version there and drops its copy.
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{ds_id}.partial-", dir=root))
    tmp.chmod(0o755)  # mkdtemp's 0700 would hide the version from a trainer running as another user
    try:
        for fname, records in (("train.jsonl", train), ("eval.jsonl", evaluation)):
            text = "".join(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in records)
            (tmp / fname).write_text(text, encoding="utf-8")
        manifest = {**ds.summary(), "source": source, "rejected": [asdict(r) for r in rejected]}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        try:
            tmp.rename(path)
        except OSError:
            if not (path / "manifest.json").exists():
                raise
            ds.created = False  # written meanwhile by another ingest of the same content
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ds


def load_split(dataset_path: Path, side: str) -> list[Record]:
    """A split's records; the tombstone of a deleted record (``lifecycle/forget.py``) is skipped."""
    rows = (json.loads(line) for line in (dataset_path / f"{side}.jsonl").read_text().splitlines() if line)
    return [Record(r["messages"], r.get("meta", {})) for r in rows if "deleted" not in r]


def extend(
    datasets_dir: Path,
    base_id: str,
    lines: Iterable[str],
    *,
    name: str,
    tokenizer: Any = None,
    max_seq_len: int = 512,
    source_label: str = "",
) -> Dataset:
    """A new dataset version: the base version's records (deleted ones excluded) plus ``lines``, which
    join its train split (its eval split stays as it is, so versions are scored on the same items).
    Without lines, a copy of what is left of the base: the retrain after a deletion."""
    base = datasets_dir / base_id
    if not (base / "train.jsonl").exists():
        raise IngestError(f"base dataset {base_id!r}: no such dataset version in {datasets_dir}")
    counter = chat_token_counter(tokenizer) if tokenizer is not None else None
    new, rejected, dups = validate(read_lines(lines), counter, max_seq_len)
    evaluation = load_split(base, "eval")
    taken = {r.content_hash for r in evaluation}
    train = []
    for r in load_split(base, "train") + new:
        if r.content_hash in taken:
            dups += 1
            continue
        taken.add(r.content_hash)
        train.append(r)
    if not train:
        raise IngestError(f"base dataset {base_id!r} and the new records hold no training record")
    return write_dataset(datasets_dir, name, source_label or f"extend:{base_id}", train, evaluation, rejected, dups)


def ingest(
    source: str | Path | Iterable[str],
    datasets_dir: Path,
    *,
    name: str = "dataset",
    eval_source: str | Path | None = None,
    eval_fraction: float = 0.1,
    seed: int = 0,
    tokenizer: Any = None,
    max_seq_len: int = 512,
    source_label: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Dataset:
    """Validate, deduplicate, split and write a dataset. Raises ``IngestError`` when nothing is valid."""
    if not 0 <= eval_fraction < 1:
        raise IngestError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    counter = chat_token_counter(tokenizer) if tokenizer is not None else None
    records, rejected, dups = validate(read_lines(source, max_bytes), counter, max_seq_len)
    if eval_source is not None:
        evaluation, bad_eval, eval_dups = validate(read_lines(eval_source, max_bytes), counter, max_seq_len, "eval")
        rejected += bad_eval
        dups += eval_dups
        train = records
    else:
        train, evaluation = split(records, eval_fraction, seed)
    if not train:
        detail = f"; first rejection: {rejected[0].where}: {rejected[0].reason}" if rejected else ""
        raise IngestError(f"no valid training records ({len(rejected)} rejected){detail}")
    label = source_label or (str(source) if isinstance(source, str | Path) else "<stdin>")
    return write_dataset(datasets_dir, name, label, train, evaluation, rejected, dups)


def record_lineage(store: Any, ds: Dataset, source: str, parents: Iterable[str] = ()) -> bool:
    """Lineage in Mongo ``datasets`` keyed by dataset id (``parents``: the versions it was built from);
    False when it was recorded already."""
    from lifecycle.store import DATASETS, now

    doc = {
        "_id": ds.id,
        **ds.summary(),
        "source": source,
        "parents": list(parents),
        "path": str(ds.path),
        "rejected_lines": [asdict(r) for r in ds.rejected],
        "created_at": now(),
    }
    return bool(store.insert_once(DATASETS, doc))
