"""The hybrid prefix cache pool on the in-process backend.

`TestPoolApi` is the backend-independent contract; tests/integration/test_pool_redis.py runs the same
class against memory and a real Redis. The module-level tests pin what only the memory backend
promises: exact byte accounting and the exact eviction order.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest

from prfaas.kv.changes import KvDelta, KvState
from prfaas.kv.prefix import block_hashes
from prfaas.pool import BlockEntry, HybridPrefixPool, MemoryBackend

BS = 4  # tokens per block
CAPACITY_BYTES = 1 << 20


def chain(num_blocks: int, seed: int = 0) -> list[bytes]:
    return block_hashes([seed * 1_000_003 + i for i in range(num_blocks * BS)], BS)


def entries(hashes: Sequence[bytes], snaps: Sequence[int] = (), kv_bytes: int = 10) -> list[BlockEntry]:
    """KV for every block (value = depth repeated), a snapshot after each block index in `snaps`."""
    return [
        BlockEntry(h, d, bytes([d]) * kv_bytes, bytes([100 + d]) * kv_bytes if d in snaps else None)
        for d, h in enumerate(hashes)
    ]


@pytest.fixture
def capacity_bytes() -> int:
    return CAPACITY_BYTES


@pytest.fixture
async def pool() -> AsyncIterator[HybridPrefixPool]:
    async with HybridPrefixPool(MemoryBackend(CAPACITY_BYTES)) as p:
        yield p


class TestPoolApi:
    async def test_no_hit_without_a_snapshot_at_the_boundary(self, pool: HybridPrefixPool) -> None:
        hashes = chain(4)
        await pool.put_blocks("t", entries(hashes))
        match = await pool.match("t", hashes, 100, BS)
        assert (match.num_blocks, match.num_tokens) == (0, 0)

    async def test_walks_back_to_the_deepest_snapshot(self, pool: HybridPrefixPool) -> None:
        hashes = chain(4)
        await pool.put_blocks("t", entries(hashes, snaps=(0, 1)))
        match = await pool.match("t", hashes, 100, BS)
        assert (match.num_blocks, match.num_tokens) == (2, 2 * BS)

    async def test_hit_is_capped_at_prompt_len_minus_one(self, pool: HybridPrefixPool) -> None:
        hashes = chain(4)
        await pool.put_blocks("t", entries(hashes, snaps=range(4)))
        assert (await pool.match("t", hashes, 4 * BS, BS)).num_blocks == 3
        assert (await pool.match("t", hashes, 4 * BS + 1, BS)).num_blocks == 4
        assert (await pool.match("t", hashes, 1, BS)).num_blocks == 0

    async def test_a_missing_kv_block_ends_the_scan(self, pool: HybridPrefixPool) -> None:
        hashes = chain(4)
        await pool.put_blocks("t", [e for e in entries(hashes, snaps=range(4)) if e.depth != 1])
        assert (await pool.match("t", hashes, 100, BS)).num_blocks == 1

    async def test_tenants_never_share_a_prefix(self, pool: HybridPrefixPool) -> None:
        hashes = chain(3)
        await pool.put_blocks("tenant-a", entries(hashes, snaps=range(3)))
        assert (await pool.match("tenant-a", hashes, 100, BS)).num_blocks == 3
        assert (await pool.match("tenant-b", hashes, 100, BS)).num_blocks == 0
        assert await pool.get_blocks("tenant-b", hashes) == []
        assert await pool.get_snapshot("tenant-b", hashes[2]) is None

    async def test_get_blocks_in_order_up_to_the_first_missing_kv(self, pool: HybridPrefixPool) -> None:
        hashes = chain(5)
        stored = entries(hashes, snaps=(1, 4))
        await pool.put_blocks("t", [stored[4], stored[1], stored[0], stored[2]])  # block 3 never stored
        assert await pool.get_blocks("t", hashes) == stored[:3]
        assert await pool.get_blocks("t", hashes[1:3]) == stored[1:3]
        assert await pool.get_blocks("t", hashes[3:]) == []

    async def test_get_snapshot(self, pool: HybridPrefixPool) -> None:
        hashes = chain(2)
        await pool.put_blocks("t", [BlockEntry(hashes[1], 1, snapshot=b"state")])
        assert await pool.get_snapshot("t", hashes[1]) == b"state"
        assert await pool.get_snapshot("t", hashes[0]) is None
        assert await pool.get_blocks("t", hashes[1:]) == []  # a snapshot alone is no KV block

    async def test_put_returns_value_bytes_written(self, pool: HybridPrefixPool) -> None:
        hashes = chain(3)
        assert await pool.put_blocks("t", entries(hashes, snaps=(2,), kv_bytes=7)) == 4 * 7
        assert await pool.put_blocks("t", [BlockEntry(hashes[0], 0)]) == 0
        assert await pool.put_blocks("t", []) == 0

    async def test_clear_one_tenant_then_all(self, pool: HybridPrefixPool) -> None:
        hashes = chain(2)
        for tenant in ("a", "b"):
            await pool.put_blocks(tenant, entries(hashes, snaps=(1,)))
        await pool.clear("a")
        assert (await pool.match("a", hashes, 100, BS)).num_blocks == 0
        assert (await pool.match("b", hashes, 100, BS)).num_blocks == 2
        assert (await pool.stats()).num_entries == 3
        await pool.clear()
        assert (await pool.match("b", hashes, 100, BS)).num_blocks == 0
        assert (await pool.stats()).num_entries == 0

    async def test_stats(self, pool: HybridPrefixPool, capacity_bytes: int) -> None:
        hashes = chain(3)
        await pool.put_blocks("t", entries(hashes, snaps=(2,)))
        await pool.match("t", hashes, 100, BS)
        await pool.match("t", hashes, 100, BS)
        await pool.match("u", hashes, 100, BS)
        stats = await pool.stats()
        assert (stats.num_entries, stats.num_hits, stats.num_misses) == (4, 2, 1)
        assert (stats.capacity_bytes, stats.num_evictions) == (capacity_bytes, 0)
        assert stats.used_bytes >= 40

    async def test_reports_its_puts_and_lists_what_it_holds(self, pool: HybridPrefixPool) -> None:
        heard: list[KvDelta] = []
        pool.on_kv(heard.append)
        hashes = chain(2)
        await pool.put_blocks("t", entries(hashes, snaps=(1,)))
        assert heard == [KvDelta(stored=tuple(hashes), snapshots_stored=(hashes[1],))]  # bare hashes
        held = await pool.held()
        assert (sorted(held.block_hashes), held.snapshot_hashes) == (sorted(hashes), (hashes[1],))

    async def test_reports_a_tenant_cleared_as_removals_and_everything_cleared(self, pool: HybridPrefixPool) -> None:
        a, b = chain(1, 0), chain(1, 1)
        await pool.put_blocks("t", entries(a, snaps=(0,)))
        await pool.put_blocks("u", entries(b))
        heard: list[KvDelta] = []
        pool.on_kv(heard.append)
        await pool.clear("t")
        assert heard == [KvDelta(removed=tuple(a), snapshots_removed=tuple(a))]
        assert await pool.held() == KvState(tuple(b))
        await pool.clear()
        assert heard[1:] == [KvDelta(cleared=True)] and await pool.held() == KvState()

    @pytest.mark.parametrize("tenant", ["", "x" * 65, "a b", "a:b", "a*", "ünï", "a\n", "a/b"])
    async def test_bad_tenant_ids_are_rejected(self, pool: HybridPrefixPool, tenant: str) -> None:
        hashes = chain(1)
        calls = [
            pool.match(tenant, hashes, 100, BS),
            pool.put_blocks(tenant, entries(hashes)),
            pool.get_blocks(tenant, hashes),
            pool.get_snapshot(tenant, hashes[0]),
            pool.clear(tenant),
        ]
        for call in calls:
            with pytest.raises(ValueError, match=r"invalid tenant id .*\[A-Za-z0-9\._-\]"):
                await call

    async def test_longest_valid_tenant_id(self, pool: HybridPrefixPool) -> None:
        tenant = "A-z_0.9" + "x" * 57
        hashes = chain(2)
        await pool.put_blocks(tenant, entries(hashes, snaps=(1,)))
        assert (await pool.match(tenant, hashes, 100, BS)).num_tokens == 2 * BS


def test_block_entries_are_validated() -> None:
    with pytest.raises(ValueError, match="depth"):
        BlockEntry(b"h", -1)
    with pytest.raises(ValueError, match="block_hash"):
        BlockEntry(b"", 0)


def _memory_pool(capacity_bytes: int) -> tuple[HybridPrefixPool, MemoryBackend]:
    backend = MemoryBackend(capacity_bytes)
    return HybridPrefixPool(backend), backend


def _order(backend: MemoryBackend) -> list[str]:
    """The eviction order as names like "A3.snap": chain letter, depth, kind."""
    return [f"{_NAMES[k.block_hash]}.{k.kind.value}" for k in backend.eviction_order()]


_NAMES = {h: f"{'ABC'[seed]}{d}" for seed in range(3) for d, h in enumerate(chain(4, seed))}


async def test_eviction_order_is_lru_then_deepest_first() -> None:
    pool, backend = _memory_pool(60)  # six 10-byte values
    a, b, c = chain(4, 0), chain(4, 1), chain(4, 2)
    await pool.put_blocks("t", entries(a, snaps=(3,)))  # 50 bytes in one call: a tie, deepest first
    assert _order(backend) == ["A3.snap", "A3.kv", "A2.kv", "A1.kv", "A0.kv"]
    await pool.put_blocks("t", entries(b[:2], snaps=(1,)))  # 80 bytes: A3's snapshot and KV go
    assert _order(backend) == ["A2.kv", "A1.kv", "A0.kv", "B1.snap", "B1.kv", "B0.kv"]
    assert len(await pool.get_blocks("t", a)) == 3  # A0..A2 become the most recent, deepest first
    assert _order(backend) == ["B1.snap", "B1.kv", "B0.kv", "A2.kv", "A1.kv", "A0.kv"]
    await pool.put_blocks("t", entries(c[:1]))  # 70 bytes: B1's snapshot goes, its KV stays
    assert _order(backend) == ["B1.kv", "B0.kv", "A2.kv", "A1.kv", "A0.kv", "C0.kv"]
    assert (await pool.stats()).num_evictions == 3
    assert (await pool.match("t", b, 100, BS)).num_blocks == 0  # no snapshot left on B


async def test_two_chains_put_together_evict_deepest_first() -> None:
    pool, backend = _memory_pool(100)
    a, b = chain(2, 0), chain(3, 1)
    await pool.put_blocks("t", [*entries(a), *entries(b, snaps=(0,))])
    assert _order(backend) == ["B2.kv", "A1.kv", "B1.kv", "B0.snap", "A0.kv", "B0.kv"]


async def test_evicting_a_kv_block_takes_its_snapshot_along() -> None:
    pool, backend = _memory_pool(40)
    a, b = chain(2, 0), chain(1, 1)
    await pool.put_blocks("t", entries(a, snaps=(1,)))
    assert await pool.get_snapshot("t", a[1]) is not None  # the snapshot is now newer than its KV
    assert _order(backend) == ["A1.kv", "A0.kv", "A1.snap"]
    await pool.put_blocks("t", entries(b, kv_bytes=20))  # 50 bytes: A1's KV goes, its snapshot with it
    assert _order(backend) == ["A0.kv", "B0.kv"]
    stats = await pool.stats()
    assert (stats.num_entries, stats.used_bytes, stats.num_evictions) == (2, 30, 2)


async def test_match_does_not_refresh_recency() -> None:
    pool, backend = _memory_pool(40)
    a, b = chain(2, 0), chain(2, 1)
    await pool.put_blocks("t", entries(a, snaps=(1,)))  # 30 bytes
    await pool.put_blocks("t", entries(b[:1]))
    assert (await pool.match("t", a, 100, BS)).num_blocks == 2
    await pool.put_blocks("t", entries(b[1:2]))  # 50 bytes: A1's snapshot goes although A just matched
    assert _order(backend) == ["A1.kv", "A0.kv", "B0.kv", "B1.kv"]


async def test_byte_accounting() -> None:
    pool, _ = _memory_pool(100)
    hashes = chain(3)
    assert await pool.put_blocks("t", entries(hashes, snaps=(2,), kv_bytes=10)) == 40
    assert (await pool.stats()).used_bytes == 40
    assert await pool.put_blocks("t", [BlockEntry(hashes[0], 0, b"x" * 25)]) == 25  # replaces 10 bytes
    assert (await pool.stats()).used_bytes == 55
    assert await pool.put_blocks("t", [BlockEntry(hashes[1], 1, b"x" * 101)]) == 0  # never fits: dropped
    assert (await pool.get_blocks("t", hashes[1:2]))[0].kv == bytes([1]) * 10
    await pool.put_blocks("u", entries(hashes[:1]))
    await pool.clear("t")
    stats = await pool.stats()
    assert (stats.num_entries, stats.used_bytes, stats.capacity_bytes, stats.num_evictions) == (1, 10, 100, 0)


async def test_evictions_are_reported_with_the_snapshots_they_take_along() -> None:
    pool, _ = _memory_pool(40)
    a, b = chain(2, 0), chain(1, 1)
    await pool.put_blocks("t", entries(a, snaps=(1,)))
    await pool.get_snapshot("t", a[1])
    heard: list[KvDelta] = []
    pool.on_kv(heard.append)
    await pool.put_blocks("t", entries(b, kv_bytes=20))  # A1's KV goes, its snapshot with it
    assert heard == [KvDelta(removed=(a[1],), snapshots_removed=(a[1],), stored=(b[0],))]
    assert await pool.held() == KvState((a[0], b[0]))  # what it holds, the next to be evicted first
