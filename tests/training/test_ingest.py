"""Ingest: bad lines named and skipped, duplicates dropped, ids stable, lineage recorded once."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from lifecycle.settings import Settings
from training.ingest import IngestError, ingest, load_split, record_lineage

GOOD = [
    {"messages": [{"role": "user", "content": f"Q{i}?"}, {"role": "assistant", "content": f"A{i}."}]} for i in range(30)
]


def write(path: Path, rows: list[object]) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_bad_lines_are_named_and_the_rest_goes_through(tmp_path: Path, smollm2_dir: Path) -> None:
    from transformers import AutoTokenizer

    rows: list[object] = [*GOOD[:10], "{broken", {"instruction": "x"}, GOOD[3], *GOOD[10:],
                          {"instruction": "long " * 600, "output": "y"}]  # fmt: skip
    src = write(tmp_path / "in.jsonl", rows)
    ds = ingest(src, tmp_path / "ds", tokenizer=AutoTokenizer.from_pretrained(smollm2_dir), max_seq_len=256)
    assert [(r.line, r.reason.split(":")[0]) for r in ds.rejected] == [
        (11, "invalid JSON"),
        (12, "field 'output' must be a string, got NoneType"),
        (34, f"{ds.rejected[2].reason.split(' ')[0]} tokens after the chat template, over max_seq_len=256"),
    ]
    assert ds.duplicates == 1
    assert ds.train + ds.eval == 30
    manifest = json.loads((ds.path / "manifest.json").read_text())
    first = {"line": 11, "reason": ds.rejected[0].reason, "source": "train", "file": "in.jsonl"}
    assert manifest["rejected"][0] == first
    assert ds.rejected[0].where == "train in.jsonl:line 11"
    assert len(load_split(ds.path, "train")) == ds.train


def test_same_content_same_id_and_appending_keeps_the_split(tmp_path: Path) -> None:
    a = ingest(write(tmp_path / "a.jsonl", GOOD[:20]), tmp_path / "ds")
    again = ingest(write(tmp_path / "b.jsonl", list(reversed(GOOD[:20]))), tmp_path / "ds")
    assert (again.id, again.created) == (a.id, False)
    grown = ingest(write(tmp_path / "c.jsonl", GOOD), tmp_path / "ds")
    assert grown.id != a.id
    old_eval = {json.dumps(r.messages) for r in load_split(a.path, "eval")}
    new_eval = {json.dumps(r.messages) for r in load_split(grown.path, "eval")}
    assert old_eval <= new_eval


def test_the_same_questions_with_and_without_answers_are_two_datasets(tmp_path: Path) -> None:
    questions = [{"instruction": f"Q{i}?", "output": f"It is A{i}."} for i in range(10)]
    answered = [{**q, "answer": f"A{i}"} for i, q in enumerate(questions)]
    train = write(tmp_path / "train.jsonl", GOOD[:20])
    open_ended = ingest(train, tmp_path / "ds", eval_source=write(tmp_path / "open.jsonl", questions))
    scored = ingest(train, tmp_path / "ds", eval_source=write(tmp_path / "answered.jsonl", answered))
    assert open_ended.id != scored.id and scored.created
    assert all("answer" in r.meta for r in load_split(scored.path, "eval"))
    assert not any("answer" in r.meta for r in load_split(open_ended.path, "eval"))


def test_no_valid_records_is_an_error_and_writes_nothing(tmp_path: Path) -> None:
    src = write(tmp_path / "bad.jsonl", ["nope", {"messages": []}])
    with pytest.raises(
        IngestError, match=r"no valid training records \(2 rejected\); first rejection: train bad\.jsonl:line 1"
    ):
        ingest(src, tmp_path / "ds")
    assert not (tmp_path / "ds").exists() or not any((tmp_path / "ds").iterdir())
    with pytest.raises(IngestError, match="no such file"):
        ingest(tmp_path / "missing.jsonl", tmp_path / "ds")


@pytest.mark.stack
def test_lineage_is_recorded_once_per_dataset(stack: Settings, tmp_path: Path) -> None:
    from lifecycle.store import DATASETS, Store

    unique = {
        "messages": [{"role": "user", "content": f"unique {uuid.uuid4()}"}, {"role": "assistant", "content": "x"}]
    }
    rows = [*GOOD, unique, "{bad"]
    ds = ingest(write(tmp_path / "in.jsonl", rows), tmp_path / "ds", name="lineage-test")
    with Store.connect(stack) as store:
        assert record_lineage(store, ds, "in.jsonl") is True
        assert record_lineage(store, ds, "in.jsonl") is False
        assert store.db[DATASETS].count_documents({"_id": ds.id}) == 1
        doc = store.get(DATASETS, ds.id)
    assert doc is not None
    assert (doc["name"], doc["train"] + doc["eval"], doc["rejected"]) == ("lineage-test", 31, 1)
    assert doc["rejected_lines"][0]["line"] == 32


def test_a_folder_written_under_an_older_id_rule_is_moved_to_its_id_not_reused(tmp_path: Path) -> None:
    import shutil

    questions = [{"instruction": f"Q{i}?", "output": f"It is A{i}."} for i in range(10)]
    train = write(tmp_path / "train.jsonl", GOOD[:20])
    scored = ingest(
        train, tmp_path / "ds", eval_source=write(tmp_path / "a.jsonl", [{**q, "answer": "A"} for q in questions])
    )
    open_id = ingest(train, tmp_path / "other", eval_source=write(tmp_path / "o.jsonl", questions)).id
    shutil.move(scored.path, tmp_path / "ds" / open_id)  # answered content under the id of the open-ended one
    open_ended = ingest(train, tmp_path / "ds", eval_source=tmp_path / "o.jsonl")
    assert open_ended.id == open_id and open_ended.created
    assert not any("answer" in r.meta for r in load_split(open_ended.path, "eval"))
    assert all("answer" in r.meta for r in load_split(tmp_path / "ds" / scored.id, "eval"))  # kept, under its id


def test_identical_ingests_at_once_write_one_version_whole(tmp_path: Path) -> None:
    """Two training-data events with the same file, or a retry racing the first try: each ingest writes a
    folder of its own, one becomes the version, the others find it; nothing partial is left."""
    import threading

    src = write(tmp_path / "a.jsonl", GOOD)
    barrier, results, errors = threading.Barrier(6), [], []

    def run() -> None:
        barrier.wait()
        try:
            results.append(ingest(src, tmp_path / "ds"))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == [] and len(results) == 6
    assert len({r.id for r in results}) == 1 and sum(r.created for r in results) == 1
    assert [p.name for p in (tmp_path / "ds").iterdir()] == [results[0].id]  # no partial folder left
    assert len(load_split(results[0].path, "train")) == results[0].train
