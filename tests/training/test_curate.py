"""Curation of feedback into training records (training/curate.py): what becomes a record, the
contamination guard against eval splits, duplicates and near duplicates, PII scrubbed, lineage kept."""

from __future__ import annotations

import random

from training.curate import Deduper, EvalGuard, curate, jaccard, minhash, words

EVAL = ["What is the capital city of the fictional island of Moravel in the northern sea?",
        "Name the Zorblax moon."]  # fmt: skip


def item(i: int, question: str, output: str = "", rating: int = 1, correction: str = "") -> dict[str, object]:
    return {"feedback_id": f"f{i}", "response_id": f"r{i}", "model": "m", "version": "3", "rating": rating,
            "correction": correction, "output": output,
            "messages": [{"role": "user", "content": question}]}  # fmt: skip


def test_corrections_and_accepted_answers_become_records_with_their_lineage() -> None:
    out = curate([item(1, "How tall is the Vesk tower?", "I don't know.", -1, "The Vesk tower is 212 m tall."),
                  item(2, "Who founded Lirra?", "Lirra was founded by Ana Pell.", 1),
                  item(3, "Who rules Dunmere?", "Nobody.", -1),
                  {"feedback_id": "f4", "rating": 1, "output": "ok"}], EVAL)  # fmt: skip
    assert [r["messages"][-1]["content"] for r in out.records] == ["The Vesk tower is 212 m tall.",
                                                                  "Lirra was founded by Ana Pell."]  # fmt: skip
    lineage = {k: v for k, v in out.records[0].items() if k != "messages"}
    assert lineage == {"response_id": "r1", "feedback_id": "f1", "model": "m", "version": "3", "source": "correction"}
    assert out.records[1]["source"] == "accepted"
    assert [r["feedback_id"] for r in out.refused] == ["f3", "f4"]
    assert "nothing to learn" in out.refused[0]["reason"] and "question was not kept" in out.refused[1]["reason"]


def test_feedback_that_overlaps_an_eval_split_is_refused_and_reported() -> None:
    leaked = item(1, "what is the capital city of the fictional island of Moravel?", "", 1, "Port Anis.")
    short = item(2, "Quick: name the zorblax moon!", "", 1, "Tellu.")
    clean = item(3, "What is the capital of the island of Kesh?", "", 1, "Amber Bay.")
    out = curate([leaked, short, clean], EVAL)
    assert [r["feedback_id"] for r in out.records] == ["f3"]
    reasons = {r["feedback_id"]: r["reason"] for r in out.refused}
    assert "overlaps an evaluation record" in reasons["f1"] and "moravel" not in reasons["f2"]
    assert "name the zorblax moon" in reasons["f2"]
    # an eval answer showing up in a correction is a leak too
    guard = EvalGuard(["The answer is that the Zorblax moon is called Tellu by sailors."])
    assert guard.overlap("Teacher said: the answer is that the zorblax moon is called tellu by sailors, I think")


def test_duplicates_and_near_duplicates_keep_the_first() -> None:
    base = "The Vesk tower in the old harbour district of Lirra is exactly 212 metres tall and was built in 1887."
    near = base.replace("exactly ", "")  # one word fewer
    other = "Dunmere is governed by a council of seven elders who are elected every four years by the guilds."
    out = curate([item(1, "Tell me about the Vesk tower.", "", 1, base),
                  item(2, "Tell me about the Vesk tower.", "", 1, base),
                  item(3, "Tell me about the Vesk tower.", "", 1, near),
                  item(4, "Who governs Dunmere?", "", 1, other)], EVAL)  # fmt: skip
    assert [r["feedback_id"] for r in out.records] == ["f1", "f4"]
    reasons = [r["reason"] for r in out.refused]
    assert reasons[0] == "exact duplicate" and reasons[1].startswith("near duplicate (Jaccard 0.8")


def test_minhash_lsh_finds_near_duplicates_among_many_and_not_unrelated_texts() -> None:
    rng = random.Random(5)
    vocab = [f"w{i}" for i in range(2000)]
    texts = [" ".join(rng.choice(vocab) for _ in range(40)) for _ in range(300)]
    d = Deduper()
    assert all(d.seen(t) is None for t in texts)  # 300 unrelated texts: none taken for another
    for t in texts[:50]:
        toks = t.split()
        toks[rng.randrange(40)] = "changed"  # one word of 40 changed: Jaccard ~0.87
        assert d.seen(" ".join(toks)) is not None
    a, b = words(texts[0]), words(texts[1])
    est = sum(x == y for x, y in zip(minhash(a), minhash(a[:-2]), strict=True)) / 128
    assert abs(est - jaccard(a, a[:-2])) < 0.15 and jaccard(a, b) < 0.05


def test_personal_data_is_scrubbed_and_counted() -> None:
    out = curate([item(1, "My email is jane@example.com, what now?", "", 1, "Write to support, Jane.")], EVAL)
    assert out.records[0]["messages"][0]["content"] == "My email is [EMAIL], what now?"
    assert out.records[0]["pii"] == {"email": 1} and out.pii == {"email": 1}
