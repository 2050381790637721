"""Record validation, hashing and the deterministic split (pure logic)."""

from __future__ import annotations

import json

import pytest

from training.records import RecordError, is_eval, parse_record


def chat(*turns: tuple[str, str]) -> str:
    return json.dumps({"messages": [{"role": r, "content": c} for r, c in turns]})


def test_chat_and_instruction_formats_normalise_to_messages() -> None:
    a = parse_record(chat(("user", "Hi?"), ("assistant", "Hello.")))
    b = parse_record({"instruction": "Hi?", "output": "Hello.", "answer": "Hello"})
    assert a.messages == b.messages == [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]
    assert a.content_hash == b.content_hash  # metadata is not content
    assert b.meta == {"answer": "Hello"}
    c = parse_record({"instruction": "Translate", "input": "chat", "output": "cat"})
    assert c.messages[0]["content"] == "Translate\n\nchat"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"text": "x"}', "unknown format"),
        (chat(("user", "q"), ("bot", "a")), "messages[1].role is 'bot'; allowed: system, user, assistant"),
        (chat(("user", "q"), ("assistant", "  ")), "field 'messages[1].content' is empty"),
        (chat(("user", "q")), "last message must be from the assistant"),
        (chat(("assistant", "a")), "at least one 'user' turn"),
        (chat(("user", "q"), ("system", "s"), ("assistant", "a")), "'system' message may only come first"),
        ('{"instruction": "q", "output": 3}', "field 'output' must be a string, got int"),
        ('{"instruction": "", "output": "a"}', "field 'instruction' is empty"),
        ('{"messages": []}', "non-empty list"),
    ],
)
def test_bad_records_are_rejected_with_the_reason(raw: str, reason: str) -> None:
    with pytest.raises(RecordError, match=None) as err:
        parse_record(raw)
    assert reason in str(err.value)


def test_split_is_seeded_and_stable_when_records_are_appended() -> None:
    hashes = [parse_record(chat(("user", f"q{i}"), ("assistant", f"a{i}"))).content_hash for i in range(2000)]
    first = {h: is_eval(h, 0.1, seed=0) for h in hashes[:1000]}
    assert 60 < sum(first.values()) < 140  # about 10 %
    after_append = {h: is_eval(h, 0.1, seed=0) for h in hashes}
    assert all(after_append[h] == side for h, side in first.items())
    other_seed = {h: is_eval(h, 0.1, seed=1) for h in hashes[:1000]}
    assert other_seed != first
