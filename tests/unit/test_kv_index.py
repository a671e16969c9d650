"""The router's KV index and source table: exact prefixes per source, the stream rules, leaving and resync."""

from __future__ import annotations

import random

import pytest

from prfaas.kv.prefix import block_hashes, longest_hybrid_prefix
from prfaas.state.index import KvIndex
from prfaas.state.table import SourceTable
from prfaas.v1 import state_pb2

H = [bytes([i]) * 16 for i in range(10)]


def test_hybrid_prefix_needs_a_snapshot_at_the_boundary() -> None:
    index = KvIndex()
    index.replace("pool", H[:6], [H[1], H[3], H[7]])
    among = index.mask(["pool"])
    assert index.hybrid_prefixes(H, 10, among) == {"pool": 4}  # blocks 0..3, snapshot after block 3
    assert index.hybrid_prefixes(H, 3, among) == {"pool": 2}
    index.update("pool", snapshots_removed=[H[1], H[3]])
    assert index.hybrid_prefixes(H, 10, among) == {}


@pytest.mark.parametrize("seed", range(5))
def test_hybrid_prefix_equals_the_reference_rule(seed: int) -> None:
    rng = random.Random(seed)
    prompt = [rng.randrange(100) for _ in range(200)]
    hashes = block_hashes(prompt, 16, b"t")
    index = KvIndex()
    held = {f"s{i}": set(hashes[: rng.randrange(1, len(hashes))]) - set(rng.sample(hashes, k=3)) for i in range(4)}
    snaps = {s: set(rng.sample(hashes, k=4)) for s in held}
    for s in held:
        index.replace(s, held[s], snaps[s])
    got = index.hybrid_prefixes(hashes, (len(prompt) - 1) // 16, index.mask(held))
    for s in held:
        ref = longest_hybrid_prefix(hashes, len(prompt), 16, held[s].__contains__, snaps[s].__contains__)
        assert got.get(s, 0) == ref.num_blocks


def test_a_source_that_leaves_takes_its_entries_and_its_bit_is_reused() -> None:
    index = KvIndex()
    index.replace("a", H[:3], [H[2]])
    index.replace("b", H[:2], ())
    index.drop("a")
    assert index.num_hashes == 2 and index.held("a") == (0, 0)
    assert index.deepest(H, 10, index.mask(["a", "b"])) == (2, ["b"])
    index.replace("c", H[:4], ())  # takes a's bit: no stale entry of a shows up as c's
    assert index.deepest(H, 10, index.mask(["b", "c"])) == (4, ["c"])


def test_delta_order_is_cleared_then_removed_then_stored() -> None:
    index = KvIndex()
    index.replace("a", H[:3], ())
    index.update("a", stored=[H[5]], removed=[H[5], H[2]], cleared=False)  # removed first, then stored
    assert index.held("a") == (3, 0)
    index.update("a", stored=[H[0]], cleared=True)
    assert index.held("a") == (1, 0) and index.deepest(H, 10, index.mask(["a"])) == (1, ["a"])


def _event(instance: str, seq: int, **kind: object) -> state_pb2.StateEvent:
    return state_pb2.StateEvent(instance_id=instance, seq=seq, **kind)  # type: ignore[arg-type]


def test_table_applies_a_stream_and_asks_to_resync_on_a_gap_or_a_new_instance() -> None:
    table = SourceTable()
    load = state_pb2.LoadReport(registered=3, slots=8)
    snap = state_pb2.StateSnapshot(block_hashes=H[:2], load=load)
    assert table.apply("w", _event("i1", 7, snapshot=snap))
    table.sent("w")
    assert table.load("w").sent == 1  # type: ignore[union-attr]
    assert table.apply("w", _event("i1", 8, kv=state_pb2.KvDelta(stored=[H[2]])))
    assert table.apply("w", _event("i1", 9, load=state_pb2.LoadReport(registered=4)))
    state = table.load("w")
    assert state is not None and state.load.registered == 4 and state.sent == 0  # the report counts them now
    assert table.index.deepest(H, 10, table.index.mask(["w"])) == (3, ["w"])
    assert not table.apply("w", _event("i1", 11, kv=state_pb2.KvDelta(stored=[H[3]])))  # seq 10 lost
    assert table.load("w") is None and table.index.held("w") == (0, 0)
    assert not table.apply("w", _event("i1", 12, kv=state_pb2.KvDelta()))  # still waiting for a snapshot
    assert table.apply("w", _event("i2", 1, snapshot=state_pb2.StateSnapshot(block_hashes=H[:1])))
    assert not table.apply("w", _event("i1", 2, kv=state_pb2.KvDelta()))  # the old instance's message


def test_deepest_holders_only() -> None:
    index = KvIndex()
    index.replace("a", H[:5], ())
    index.replace("b", H[:5], ())
    index.replace("c", H[:2], ())
    index.replace("d", H[1:], ())
    assert index.deepest(H, 10, index.mask(["a", "b", "c", "d"])) == (5, ["a", "b"])
    assert index.deepest(H, 3, index.mask(["a", "c"])) == (3, ["a"])  # capped: c holds only 2
    assert index.deepest(H, 10, index.mask(["c", "d"])) == (2, ["c"])
    assert index.deepest(H, 10, index.mask(["d"])) == (0, [])
    assert index.deepest(H, 10, index.every) == (5, ["a", "b"])
