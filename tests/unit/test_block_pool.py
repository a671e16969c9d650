"""Block pool bookkeeping: exact block ids, reference counts and eviction order."""

from __future__ import annotations

import pytest

from prfaas.kv.block_pool import BlockPool, OutOfBlocks


def test_allocate_takes_lowest_free_blocks_in_order() -> None:
    pool = BlockPool(4)
    assert pool.allocate(2) == [0, 1]
    assert pool.allocate(2) == [2, 3]
    with pytest.raises(OutOfBlocks, match="need 1 KV blocks, 0 free of 4"):
        pool.allocate(1)


def test_cached_free_blocks_are_evicted_lru_deepest_first() -> None:
    pool = BlockPool(4)
    seq = pool.allocate(3)
    for block, h in zip(seq, [b"a", b"b", b"c"], strict=True):
        pool.register(block, h)
    pool.free(reversed(seq))  # deepest first
    assert pool.num_free == 4 and pool.num_cached == 3
    # free queue: 3 (never used), then 2 (deepest), 1, 0
    assert pool.allocate(1) == [3]
    assert pool.allocate(1) == [2]
    assert pool.lookup(b"c") is None  # evicted
    assert pool.lookup(b"a") == 0 and pool.lookup(b"b") == 1


def test_acquire_pins_a_cached_block() -> None:
    pool = BlockPool(2)
    [b0] = pool.allocate(1)
    pool.register(b0, b"x")
    pool.free([b0])
    pool.acquire(b0)
    assert pool.ref_count(b0) == 1 and pool.num_free == 1
    assert pool.allocate(1) == [1]
    with pytest.raises(OutOfBlocks):
        pool.allocate(1)  # the pinned block is not handed out
    pool.free([b0])
    assert pool.lookup(b"x") == b0


def test_double_free_is_an_error() -> None:
    pool = BlockPool(1)
    [b] = pool.allocate(1)
    pool.free([b])
    with pytest.raises(RuntimeError, match="freed more often"):
        pool.free([b])


def test_first_registration_of_a_hash_wins() -> None:
    pool = BlockPool(2)
    a, b = pool.allocate(2)
    pool.register(a, b"h")
    pool.register(b, b"h")
    assert pool.lookup(b"h") == a and pool.block_hash(b) is None
