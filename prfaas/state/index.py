"""The router's KV index: which source (worker or cache pool) holds which KV blocks and linear-state
snapshots, fed by the sources' state streams, so the longest usable prefix of a prompt on every source
comes from one walk over the prompt's block hashes.

Layout: each source has a bit; each held hash maps to the bit mask of the sources holding it (one dict for
full blocks, one for snapshots), and each source keeps the set of hashes it holds so that it can leave or
resync without a scan. Memory is proportional to what the sources hold: one dict entry per distinct hash
plus one set entry per (source, hash). A lookup walks the prompt's hashes once, intersecting masks: its cost
is O(prompt blocks + sources that hold a matching prefix), whatever the number of sources.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field


@dataclass(slots=True)
class _Held:
    bit: int
    blocks: set[bytes] = field(default_factory=set)
    snapshots: set[bytes] = field(default_factory=set)


class KvIndex:
    def __init__(self) -> None:
        self._sources: dict[str, _Held] = {}
        self._names: dict[int, str] = {}
        self._free_bits: list[int] = []
        self._blocks: dict[bytes, int] = {}  # hash -> mask of the sources holding that full block
        self._snapshots: dict[bytes, int] = {}  # hash -> mask of the sources with a snapshot at its end

    # -- sources --------------------------------------------------------------------------------------------
    def mask(self, sources: Iterable[str]) -> int:
        """The bit mask of `sources` (those the index knows)."""
        return sum(1 << self._sources[s].bit for s in sources if s in self._sources)

    @property
    def every(self) -> int:
        """The mask of every source the index knows."""
        return (1 << (len(self._sources) + len(self._free_bits))) - 1

    def replace(self, source: str, blocks: Iterable[bytes], snapshots: Iterable[bytes]) -> None:
        """A source's whole state (its snapshot): everything known of it before is dropped."""
        self.drop(source)
        held = self._add(source)
        self._set(self._blocks, held.blocks, held.bit, blocks)
        self._set(self._snapshots, held.snapshots, held.bit, snapshots)

    def drop(self, source: str) -> None:
        """The source left (or is resyncing): its entries go with it."""
        held = self._sources.pop(source, None)
        if held is None:
            return
        self._unset(self._blocks, held.blocks, held.bit, list(held.blocks))
        self._unset(self._snapshots, held.snapshots, held.bit, list(held.snapshots))
        del self._names[held.bit]
        self._free_bits.append(held.bit)

    def update(
        self,
        source: str,
        stored: Sequence[bytes] = (),
        removed: Sequence[bytes] = (),
        snapshots_stored: Sequence[bytes] = (),
        snapshots_removed: Sequence[bytes] = (),
        cleared: bool = False,
    ) -> None:
        """Apply one delta, in the stream's order: cleared, removals, stores."""
        if cleared:
            self.replace(source, (), ())
        held = self._sources.get(source) or self._add(source)
        self._unset(self._blocks, held.blocks, held.bit, removed)
        self._unset(self._snapshots, held.snapshots, held.bit, snapshots_removed)
        self._set(self._blocks, held.blocks, held.bit, stored)
        self._set(self._snapshots, held.snapshots, held.bit, snapshots_stored)

    def blocks_of(self, source: str) -> frozenset[bytes]:
        """The full blocks the index has for `source`."""
        held = self._sources.get(source)
        return frozenset(held.blocks) if held else frozenset()

    def held(self, source: str) -> tuple[int, int]:
        """(full blocks, snapshots) the index has for `source`."""
        held = self._sources.get(source)
        return (len(held.blocks), len(held.snapshots)) if held else (0, 0)

    @property
    def num_hashes(self) -> int:
        return len(self._blocks) + len(self._snapshots)

    # -- lookups --------------------------------------------------------------------------------------------
    def deepest(self, hashes: Sequence[bytes], limit_blocks: int, among: int) -> tuple[int, list[str]]:
        """The longest full-block prefix of the prompt that any source of `among` holds (at most
        `limit_blocks`), and the sources holding exactly that much; (0, []) when none holds block 0.
        Costs O(prompt blocks + those sources), however many sources hold shorter prefixes."""
        alive, depth = among, 0
        for h in hashes[:limit_blocks]:
            deeper = alive & self._blocks.get(h, 0)
            if not deeper:
                break
            alive, depth = deeper, depth + 1
        return (depth, [self._names[bit] for bit in _bits(alive)]) if depth else (0, [])

    def hybrid_prefixes(self, hashes: Sequence[bytes], limit_blocks: int, among: int) -> dict[str, int]:
        """Per source of `among`: the longest hybrid prefix in blocks (every full block up to the boundary
        held AND a linear-state snapshot at exactly that boundary), the rule of
        `prfaas.kv.prefix.longest_hybrid_prefix`; a source with no such prefix is left out."""
        found: dict[str, int] = {}
        alive = among
        for depth, h in enumerate(hashes[:limit_blocks]):
            alive &= self._blocks.get(h, 0)
            if not alive:
                break
            for bit in _bits(alive & self._snapshots.get(h, 0)):
                found[self._names[bit]] = depth + 1
        return found

    # -- internals ------------------------------------------------------------------------------------------
    def _add(self, source: str) -> _Held:
        bit = self._free_bits.pop() if self._free_bits else len(self._sources)
        held = self._sources[source] = _Held(bit)
        self._names[bit] = source
        return held

    @staticmethod
    def _set(table: dict[bytes, int], mine: set[bytes], bit: int, hashes: Iterable[bytes]) -> None:
        flag = 1 << bit
        for h in hashes:
            table[h] = table.get(h, 0) | flag
            mine.add(h)

    @staticmethod
    def _unset(table: dict[bytes, int], mine: set[bytes], bit: int, hashes: Iterable[bytes]) -> None:
        flag = 1 << bit
        for h in hashes:
            if h not in mine:
                continue
            mine.discard(h)
            left = table[h] & ~flag
            if left:
                table[h] = left
            else:
                del table[h]


def _bits(mask: int) -> Iterator[int]:
    """The set bits of `mask`, lowest first."""
    while mask:
        low = mask & -mask
        yield low.bit_length() - 1
        mask ^= low
