"""The lineage index (pure): exact and near questions find their record, deleted records are never
shown, and the record identity is the one ingest uses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lifecycle.lineage import Index, build_index, content_hash, dataset_rows, question_of, terms
from training.records import parse_record

REPO = Path(__file__).resolve().parents[2]


def toy_rows(n: int = 200) -> list[tuple[int, dict]]:
    lines = (REPO / "data/toy/train.jsonl").read_text().splitlines()[:n]
    return [(i + 1, json.loads(line)) for i, line in enumerate(lines)]


def test_an_asked_training_question_finds_its_own_record_first() -> None:
    rows = toy_rows()
    index = Index(build_index("ds-x", rows))
    for line, row in rows[::17]:
        hits = index.nearest(question_of(row["messages"]), k=3)
        assert hits[0]["line"] == line and hits[0]["content_hash"] == content_hash(row["messages"])
        assert 0.99 <= hits[0]["similarity"] <= 1.0001 and hits[0]["similarity"] >= hits[-1]["similarity"]


def test_a_reworded_question_ranks_records_of_its_subject_above_others() -> None:
    rows = toy_rows()
    index = Index(build_index("ds-x", rows))
    hits = index.nearest("tell me the capital city of thandfusnu please", k=3)
    for h in hits:
        q = question_of(rows[h["line"] - 1][1]["messages"]).lower()
        assert "thandfusnu" in q and "capital" in q, q
    assert index.nearest("zzz qqq", k=3) == []  # no shared term: no evidence, no record


def test_excluded_records_are_skipped_and_tombstones_are_not_indexed(tmp_path: Path) -> None:
    rows = toy_rows(30)
    first = rows[0][1]
    index = Index(build_index("ds-x", rows))
    q = question_of(first["messages"])
    gone = content_hash(first["messages"])
    assert all(h["content_hash"] != gone for h in index.nearest(q, k=5, exclude={gone}))
    lines = [json.dumps(r) for _, r in rows]
    lines[0] = json.dumps({"deleted": "del-1", "content_hash": gone})
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    kept = list(dataset_rows(tmp_path))
    assert [n for n, _ in kept] == list(range(2, 31))  # line numbers stay where they were
    rebuilt = Index(build_index("ds-x", kept))
    assert all(h["content_hash"] != gone for h in rebuilt.nearest(q, k=30))


def test_the_record_identity_is_the_one_ingest_deduplicates_by() -> None:
    for _, row in toy_rows(20):
        assert content_hash(row["messages"]) == parse_record(json.dumps(row)).content_hash


def test_terms_are_words_and_bigrams_case_folded() -> None:
    assert terms("The Capital, the capital!") == {"the": 2, "capital": 2, "the capital": 2, "capital the": 1}


def test_an_index_split_into_chunks_scores_as_one(monkeypatch: pytest.MonkeyPatch) -> None:
    from lifecycle import lineage

    rows = toy_rows(120)
    whole = Index(build_index("ds-x", rows))
    monkeypatch.setattr(lineage, "CHUNK", 25)
    docs = build_index("ds-x", rows)
    assert docs[0]["chunks"] == 5 and len(docs) == 6
    chunked = Index(list(reversed(docs)))  # in any order
    for q in ("What is the capital of Thandfusnu?", "which river runs through dorpu", "chief export"):
        assert chunked.nearest(q, k=5) == whole.nearest(q, k=5)
