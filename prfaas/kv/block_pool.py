"""Block bookkeeping for paged full-attention KV: reference counts, the free queue and the hash index.

A block is either in use (ref count > 0) or free. A free block may still hold a cached prefix (it
keeps its hash) until it is handed out again; handing it out evicts that prefix. The free queue is
LRU: blocks freed longest ago are reused first. A finishing sequence frees its blocks deepest first,
so among blocks freed together the deepest are evicted first and shared shallow prefixes survive.

`on_change(hash, held)`, when set, hears every change to the hash index: a hash registered (True) and a
cached hash forgotten because its block was handed out again (False).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable


class OutOfBlocks(RuntimeError):
    """The pool cannot satisfy an allocation."""


class BlockPool:
    def __init__(self, num_blocks: int) -> None:
        if num_blocks <= 0:
            raise ValueError(f"num_blocks must be positive, got {num_blocks}")
        self.num_blocks = num_blocks
        self._refs = [0] * num_blocks
        self._free: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))
        self._hash_of: dict[int, bytes] = {}
        self._block_of: dict[bytes, int] = {}
        self.on_change: Callable[[bytes, bool], None] | None = None

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self._free)

    @property
    def num_cached(self) -> int:
        return len(self._block_of)

    def ref_count(self, block: int) -> int:
        return self._refs[block]

    def allocate(self, n: int) -> list[int]:
        """Take `n` blocks from the head of the free queue, evicting whatever prefix they cached."""
        if n > len(self._free):
            raise OutOfBlocks(f"need {n} KV blocks, {len(self._free)} free of {self.num_blocks}")
        blocks = []
        for _ in range(n):
            block, _ = self._free.popitem(last=False)
            self._forget(block)
            self._refs[block] = 1
            blocks.append(block)
        return blocks

    def free(self, blocks: Iterable[int]) -> None:
        """Drop one reference from each block; blocks reaching zero join the tail of the free queue.

        Callers pass a sequence's blocks deepest first (see module docstring)."""
        for block in blocks:
            if self._refs[block] <= 0:
                raise RuntimeError(f"block {block} freed more often than referenced")
            self._refs[block] -= 1
            if self._refs[block] == 0:
                self._free[block] = None

    def acquire(self, block: int) -> None:
        """Add a reference to a cached block (a prefix hit), taking it off the free queue if needed."""
        if self._refs[block] == 0:
            del self._free[block]
        self._refs[block] += 1

    def lookup(self, block_hash: bytes) -> int | None:
        return self._block_of.get(block_hash)

    def register(self, block: int, block_hash: bytes) -> None:
        """Publish a full block under its chained hash. An equal block cached earlier keeps the hash."""
        if block_hash in self._block_of or block in self._hash_of:
            return
        self._hash_of[block] = block_hash
        self._block_of[block_hash] = block
        self._changed(block_hash, True)

    def block_hash(self, block: int) -> bytes | None:
        return self._hash_of.get(block)

    def cached_hashes(self) -> list[bytes]:
        """Every hash the index holds (full blocks in use or cached)."""
        return list(self._block_of)

    def _forget(self, block: int) -> None:
        old = self._hash_of.pop(block, None)
        if old is not None:
            del self._block_of[old]
            self._changed(old, False)

    def _changed(self, block_hash: bytes, held: bool) -> None:
        if self.on_change is not None:
            self.on_change(block_hash, held)
