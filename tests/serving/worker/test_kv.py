"""Which prompts admitted together share a beginning (pure logic), and the copy of its keys and values."""

from __future__ import annotations

import torch

from serving.worker import kv
from serving.worker.prefix import PrefixCache

SYSTEM = list(range(100, 127))  # a 27-token system prompt


def test_prompts_sharing_a_beginning_follow_the_first_of_the_same_adapter() -> None:
    contexts = [[*SYSTEM, 1, 2, 3], [*SYSTEM, 4, 5], [9, 9, 9], [*SYSTEM, 1, 2, 7], [*SYSTEM, 6]]
    adapters: list[str | None] = [None, None, None, None, "a"]
    share = kv.shared(contexts, [0] * 5, adapters, least=32)
    assert share[0] == (-1, 0) and share[2] == (-1, 0)  # leaders
    assert share[1] == (0, 27)
    assert share[3] == (0, 29)  # the longest match: two more tokens than the system prompt
    assert share[4] == (-1, 0)  # another adapter's keys and values differ: it leads its own


def test_one_token_is_always_left_to_prefill_and_small_savings_take_no_second_pass() -> None:
    same = [*SYSTEM, 1]
    share = kv.shared([same, list(same)], [0, 0], [None, None], least=1)
    assert share[1] == (0, len(same) - 1)  # the last token is prefilled: it gives the first output token
    # 27 + 27 tokens saved in all: below a threshold of 64, everyone prefills in one pass
    assert kv.shared([[*SYSTEM, 1], [*SYSTEM, 2], [*SYSTEM, 3]], [0, 0, 0], [None] * 3, least=64) == [(-1, 0)] * 3
    # what a follower restored from the prefix cache already is not counted as saved
    assert kv.shared([[*SYSTEM, 1], [*SYSTEM, 2]], [0, 16], [None, None], least=11) == [(-1, 0), (0, 27)]
    assert kv.shared([[*SYSTEM, 1], [*SYSTEM, 2]], [0, 16], [None, None], least=12) == [(-1, 0)] * 2


def test_copy_prefix_copies_only_the_shared_columns_of_every_layer() -> None:
    store = kv.KVStore(type("M", (), {"config": None})(), rows=5)
    store.columns = 8
    for layer in (0, 1):
        store.k[layer] = torch.arange(5 * 2 * 8 * 3, dtype=torch.float32).reshape(5, 2, 8, 3)
        store.v[layer] = -store.k[layer]
    before = {layer: store.k[layer].clone() for layer in (0, 1)}
    kv.copy_prefix(store, [(0, 2, 5), (0, 3, 5), (1, 4, 2)])
    for layer in (0, 1):
        assert torch.equal(store.k[layer][2, :, :5], before[layer][0, :, :5])
        assert torch.equal(store.k[layer][3, :, :5], before[layer][0, :, :5])
        assert torch.equal(store.k[layer][2, :, 5:], before[layer][2, :, 5:])  # the rest of the row untouched
        assert torch.equal(store.v[layer][3, :, :5], -before[layer][0, :, :5])
        assert torch.equal(store.k[layer][4, :, :2], before[layer][1, :, :2])
        assert torch.equal(store.k[layer][4, :, 2:], before[layer][4, :, 2:])


class _Store:
    """Two layers of keys and values [rows, kv_heads, columns, dim], as kv.KVStore holds them."""

    def __init__(self, rows: int = 6, columns: int = 64) -> None:
        gen = torch.Generator().manual_seed(3)
        self.k = {i: torch.randn(rows, 2, columns, 4, generator=gen) for i in (0, 1)}
        self.v = {i: torch.randn(rows, 2, columns, 4, generator=gen) for i in (0, 1)}

    def layer(self, idx: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.k[idx], self.v[idx]


def test_the_prefix_cache_restores_every_prompts_cached_blocks_into_its_own_row() -> None:
    store, cache = _Store(), PrefixCache()
    long, short = list(range(1, 41)), list(range(50, 70))  # 40 tokens: 2 blocks cached; 20: 1
    cache.save(store, 0, None, long)
    cache.save(store, 1, "a", short)
    written = {i: (store.k[i].clone(), store.v[i].clone()) for i in (0, 1)}
    asks = [(3, None, [*long, 99]), (4, "a", [*short[:17]]), (5, None, short), (2, None, long[:33])]
    assert cache.restore(store, asks) == [32, 16, 0, 32]  # another adapter's blocks are not this one's
    for i in (0, 1):
        for t, before in zip((store.k[i], store.v[i]), written[i], strict=True):
            assert torch.equal(t[3, :, :32], before[0, :, :32]) and torch.equal(t[2, :, :32], before[0, :, :32])
            assert torch.equal(t[4, :, :16], before[1, :, :16])
            assert torch.equal(t[3, :, 32:], before[3, :, 32:]) and torch.equal(t[4, :, 16:], before[4, :, 16:])
            assert torch.equal(t[5], before[5]) and torch.equal(t[:2], before[:2])  # no hit; the sources
