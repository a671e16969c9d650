"""Chained block hashes and the hybrid prefix-hit rule.

A block hash covers the block's token ids and, through its parent's hash, every token before it; the
first block is seeded with an optional namespace salt (the tenant), so equal tokens under different
salts never collide. A hybrid prefix hit is the longest block-aligned prefix, at most
`prompt_len - 1` tokens (one token must be recomputed to produce logits), for which every
full-attention block is present AND a linear-state snapshot exists at exactly that boundary: a
recurrent state cannot be rewound, so linear layers only hit where a snapshot was taken.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

HASH_BYTES = 16
DEFAULT_BLOCK_SIZE = 64  # tokens per block, unless a deployment says otherwise


def block_hashes(token_ids: Sequence[int], block_size: int, salt: bytes = b"") -> list[bytes]:
    """Chained hashes of every full block of `token_ids`."""
    ids = np.asarray(token_ids, dtype=np.int64)
    parent = hashlib.blake2b(b"prfaas-prefix|" + salt, digest_size=HASH_BYTES).digest()
    hashes = []
    for start in range(0, len(ids) - block_size + 1, block_size):
        h = hashlib.blake2b(parent, digest_size=HASH_BYTES)
        h.update(ids[start : start + block_size].tobytes())
        parent = h.digest()
        hashes.append(parent)
    return hashes


@dataclass(frozen=True, slots=True)
class PrefixMatch:
    num_blocks: int
    block_size: int

    @property
    def num_tokens(self) -> int:
        return self.num_blocks * self.block_size


def longest_hybrid_prefix(
    hashes: Sequence[bytes],
    prompt_len: int,
    block_size: int,
    has_full_block: Callable[[bytes], bool],
    has_snapshot: Callable[[bytes], bool],
) -> PrefixMatch:
    """Scan full-attention blocks left to right, then walk back to the deepest snapshot boundary."""
    limit = min(len(hashes), (prompt_len - 1) // block_size)
    present = 0
    while present < limit and has_full_block(hashes[present]):
        present += 1
    for n in range(present, 0, -1):
        if has_snapshot(hashes[n - 1]):
            return PrefixMatch(n, block_size)
    return PrefixMatch(0, block_size)
