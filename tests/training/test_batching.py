"""Assistant-only labels and the global batch order (pure logic on the real tokenizer)."""

from __future__ import annotations

from pathlib import Path

from training.batching import IGNORE, collate, encode_chat, global_batches, micro_batches, shard


def test_labels_cover_only_assistant_turns(smollm2_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    messages = [
        {"role": "user", "content": "Capital of Thandfusnu?"},
        {"role": "assistant", "content": "Kronzaemfei."},
        {"role": "user", "content": "And its river?"},
        {"role": "assistant", "content": "Solloulny."},
    ]
    ex = encode_chat(tok, messages, 512)
    learned = tok.decode([t for t in ex.labels if t != IGNORE])
    assert learned == "Kronzaemfei.<|im_end|>\nSolloulny.<|im_end|>\n"
    assert "Thandfusnu" not in learned and "river" not in learned
    assert len(ex.input_ids) == len(ex.labels)
    short = encode_chat(tok, messages, 10)
    assert len(short.input_ids) == 10


def test_global_batches_are_deterministic_grouped_and_shardable() -> None:
    lengths = [(i * 37) % 101 + 5 for i in range(200)]
    a = global_batches(lengths, 16, seed=3, epoch=0)
    assert a == global_batches(lengths, 16, seed=3, epoch=0)
    assert a != global_batches(lengths, 16, seed=3, epoch=1)
    assert len(a) == 200 // 16 and all(len(b) == 16 for b in a)
    assert len({i for b in a for i in b}) == 16 * len(a)  # no index twice in an epoch
    for batch in a:
        parts = [shard(batch, r, 2) for r in range(2)]
        assert parts[0] + parts[1] == batch
        assert micro_batches(parts[0], 3) == [parts[0][0:3], parts[0][3:6], parts[0][6:8]]
    # Length grouping: a batch spans a narrow range of lengths compared with the data.
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in a) / len(a)
    assert spread < (max(lengths) - min(lengths)) / 3


def test_collate_pads_right_and_masks_padding() -> None:
    from training.batching import Example

    batch = collate([Example([1, 2, 3], [IGNORE, 2, 3]), Example([4], [4])], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 2, 3], [4, IGNORE, IGNORE]]
