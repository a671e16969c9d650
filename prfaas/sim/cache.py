"""A cluster's prefix cache pool: LRU over chained block hashes (§3.2; vLLM-style semantics).

Block ``i`` of a prompt is keyed by a hash of its whole prefix (``key_i = hash((key_{i-1}, hash_id_i))``), so
equal keys mean equal prefixes and a lookup is the longest run of leading keys present. Only full blocks are
cached (prefix-cache blocks must be fully populated). Eviction is least-recently-used; a request's blocks are
touched tail first, so within one prompt the tail is evicted before the head and chains shrink from the end.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence


class PrefixCache:
    """``capacity_blocks`` blocks of ``block_tokens`` tokens each."""

    __slots__ = ("_blocks", "block_tokens", "capacity_blocks", "evicted_blocks")

    def __init__(self, capacity_blocks: int, block_tokens: int) -> None:
        if capacity_blocks < 0 or block_tokens < 1:
            raise ValueError(f"need capacity_blocks >= 0 and block_tokens >= 1, got {capacity_blocks}, {block_tokens}")
        self.capacity_blocks = capacity_blocks
        self.block_tokens = block_tokens
        self.evicted_blocks = 0
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def __contains__(self, key: int) -> bool:
        return key in self._blocks

    def match_blocks(self, keys: Sequence[int], touch: bool = False) -> int:
        """The number of leading ``keys`` cached; ``touch`` marks them used (a hit that is consumed)."""
        blocks = self._blocks
        n = 0
        for key in keys:
            if key not in blocks:
                break
            n += 1
        if touch:
            self._touch(keys[:n])
        return n

    def match_tokens(self, keys: Sequence[int], prompt_tokens: int, touch: bool = False) -> int:
        """Cached prefix in tokens, leaving at least one token to compute (a prefill must produce logits)."""
        if not keys:
            return 0
        return min(self.match_blocks(keys, touch) * self.block_tokens, prompt_tokens - 1)

    def insert(self, keys: Sequence[int]) -> None:
        """Cache (or refresh) every block of ``keys``, then evict LRU blocks beyond capacity."""
        self._touch(keys)
        blocks = self._blocks
        while len(blocks) > self.capacity_blocks:
            blocks.popitem(last=False)
            self.evicted_blocks += 1

    def _touch(self, keys: Sequence[int]) -> None:
        blocks = self._blocks
        for key in reversed(keys):
            blocks[key] = None
            blocks.move_to_end(key)
