"""What a prefix cache reports about what it holds: the net-change recorder, the block pool's and the
snapshot store's hooks, and an engine's exact stored / removed hashes (alone and behind `AsyncEngine`)."""

from __future__ import annotations

import pytest
import torch

from prfaas.engine.async_engine import AsyncEngine
from prfaas.engine.engine import Engine, EngineConfig
from prfaas.engine.sampling import SamplingParams
from prfaas.kv.block_pool import BlockPool
from prfaas.kv.changes import KvChanges, KvDelta, KvFeed
from prfaas.kv.prefix import block_hashes
from prfaas.kv.snapshots import LinearSnapshot, SnapshotStore
from prfaas.model.checkpoint import load_checkpoint
from prfaas.model.kimi_linear import KimiLinearModel
from prfaas.model.tiny import ensure_tiny

BS = 16
PARAMS = SamplingParams(max_new_tokens=4, ignore_eos=True)


def test_changes_net_out_per_hash_and_clear_drops_what_came_before() -> None:
    changes = KvChanges()
    assert changes.take() is None
    changes.block(b"a", True)
    changes.block(b"b", True)
    changes.block(b"a", False)  # stored then removed: removed
    changes.snapshot(b"b", True)
    assert changes.take() == KvDelta(removed=(b"a",), stored=(b"b",), snapshots_stored=(b"b",))
    assert changes.take() is None
    changes.block(b"x", False)
    changes.clear()
    changes.block(b"c", True)
    assert changes.take() == KvDelta(cleared=True, stored=(b"c",))


def test_a_feed_flushes_to_every_listener_and_drops_changes_nobody_hears() -> None:
    feed, heard = KvFeed(), list[KvDelta]()
    feed.changes.block(b"lost", True)
    feed.flush()
    feed.subscribe(heard.append)
    feed.flush()  # nothing new
    feed.changes.block(b"a", True)
    feed.flush()
    assert heard == [KvDelta(stored=(b"a",))]


def test_block_pool_reports_registrations_and_forgotten_hashes() -> None:
    pool, heard = BlockPool(2), list[tuple[bytes, bool]]()
    pool.on_change = lambda h, held: heard.append((h, held))
    a, b = pool.allocate(2)
    pool.register(a, b"A")
    pool.register(b, b"A")  # an equal block cached earlier keeps the hash: nothing to report
    pool.register(b, b"B")
    pool.free([b, a])
    assert pool.cached_hashes() == [b"A", b"B"]
    pool.allocate(1)  # block b (freed first) is handed out again: B forgotten
    assert heard == [(b"A", True), (b"B", True), (b"B", False)]


def _snap(nbytes: int) -> LinearSnapshot:
    return LinearSnapshot(torch.zeros(nbytes // 4), torch.empty(0))


def test_snapshot_store_reports_puts_and_evictions_unless_it_always_hits() -> None:
    store, heard = SnapshotStore(capacity_bytes=80), list[tuple[bytes, bool]]()
    store.on_change = lambda h, held: heard.append((h, held))
    store.put(b"a", _snap(40))
    store.put(b"b", _snap(40))
    store.put(b"c", _snap(40))  # a (least recently used) goes
    store.put(b"d", _snap(400))  # larger than the store: not kept, not reported
    assert heard == [(b"a", True), (b"b", True), (b"c", True), (b"a", False)]
    assert store.hashes() == [b"b", b"c"]
    always = SnapshotStore(80, always_hit=True)
    always.on_change = lambda h, held: heard.append((h, held))
    always.put(b"e", _snap(40))
    assert len(heard) == 4 and always.hashes() == []


@pytest.fixture(scope="module")
def model() -> KimiLinearModel:
    return load_checkpoint(ensure_tiny())


def tiny_engine(model: KimiLinearModel) -> Engine:
    """Four blocks of 16 tokens: a 40-token request fills two and needs three, a 60-token one needs all four."""
    return Engine(model, EngineConfig(block_size=BS, num_blocks=4, max_seqs=2, max_prefill_tokens=32))


def prompt(n: int, seed: int) -> list[int]:
    return torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def test_engine_reports_the_blocks_it_fills_then_the_ones_a_later_request_evicts(model: KimiLinearModel) -> None:
    engine = tiny_engine(model)
    changes = engine.cache.track_changes()
    first, second = prompt(40, 1), prompt(60, 2)
    h1, h2 = block_hashes(first, BS), block_hashes(second, BS)
    engine.generate([first], PARAMS)  # 40 + 3 computed tokens: two full blocks, snapshots at both ends
    assert changes.take() == KvDelta(stored=tuple(h1), snapshots_stored=tuple(h1))
    engine.generate([second], PARAMS)  # takes every block: the first prompt's go, deepest first
    assert changes.take() == KvDelta(removed=(h1[1], h1[0]), stored=tuple(h2), snapshots_stored=tuple(h2))
    held = engine.cache.held()
    assert (held.block_hashes, held.snapshot_hashes) == (tuple(h2), (*h1, *h2))  # snapshots outlive blocks


async def test_async_engine_delivers_changes_in_order_before_a_command_that_reflects_them(
    model: KimiLinearModel,
) -> None:
    engine = AsyncEngine(tiny_engine(model), "test-engine")
    heard: list[KvDelta] = []
    engine.on_kv(heard.append)
    engine.start()
    try:
        for i, ids in enumerate((prompt(40, 1), prompt(60, 2))):
            q = engine.open_stream(f"r{i}")
            await engine.call(lambda e, ids=ids, i=i: e.add_request(ids, PARAMS, request_id=f"r{i}"))  # type: ignore[misc]
            async for _ in engine.events(f"r{i}", q):
                pass
            state = await engine.kv_state()
            blocks: set[bytes] = set()
            for delta in heard:  # replaying every delta heard so far gives exactly the state
                blocks = (blocks - set(delta.removed)) | set(delta.stored)
            assert blocks == set(state.block_hashes) == set(block_hashes(ids, BS))
    finally:
        await engine.stop()
    removed = [h for d in heard for h in d.removed]
    assert removed == list(reversed(block_hashes(prompt(40, 1), BS)))
