"""Chained block hashes and the hybrid prefix-hit rule."""

from __future__ import annotations

from prfaas.kv.prefix import block_hashes, longest_hybrid_prefix


def test_hashes_chain_and_cover_full_blocks_only() -> None:
    a = block_hashes(list(range(10)), 4)
    b = block_hashes([*range(4), 99, 5, 6, 7, 8, 9], 4)
    assert len(a) == 2  # 10 tokens -> 2 full blocks
    assert a[0] == b[0] and a[1] != b[1]
    c = block_hashes([0, 1, 2, 3, 99, 99, 99, 99, *range(4, 8)], 4)
    assert c[2] != a[1]  # equal block content, different parent


def test_salt_separates_namespaces() -> None:
    assert block_hashes([1, 2, 3, 4], 4, b"tenant-a") != block_hashes([1, 2, 3, 4], 4, b"tenant-b")


def _hit(present: set[int], snaps: set[int], prompt_len: int, n: int = 6) -> int:
    hashes = [bytes([i]) for i in range(n)]
    match = longest_hybrid_prefix(hashes, prompt_len, 4, lambda h: h[0] in present, lambda h: h[0] in snaps)
    return match.num_tokens


def test_hit_needs_full_blocks_and_a_snapshot_at_that_boundary() -> None:
    assert _hit({0, 1, 2, 3}, {1, 3}, 100) == 16  # snapshot at block 3 boundary
    assert _hit({0, 1, 2, 3}, {1}, 100) == 8  # walks back to the deepest snapshot
    assert _hit({0, 1, 2, 3}, set(), 100) == 0
    assert _hit({0, 2, 3}, {2, 3}, 100) == 0  # block 1 missing stops the scan
    assert _hit({0, 1}, {0, 1, 2}, 100) == 8  # snapshot beyond the present blocks is useless


def test_hit_leaves_at_least_one_token_to_compute() -> None:
    assert _hit(set(range(6)), set(range(6)), 16) == 12  # 16 tokens: at most 15 -> 3 blocks
    assert _hit(set(range(6)), set(range(6)), 17) == 16
    assert _hit(set(range(6)), set(range(6)), 1) == 0
