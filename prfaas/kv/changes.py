"""What a KV holder (an engine's prefix cache, a cache pool) reports about what it holds.

Full blocks are named by their chained hash and linear-state snapshots by the hash of the block they end
(`prefix.py`), so a holder's content is two sets of hashes (`KvState`) and every change is a set
operation: store, remove, or clear everything. `KvChanges` records them as they happen and hands them
out as one `KvDelta` (the net change since the last one); `KvFeed` passes each delta to listeners.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class KvState:
    """Everything a holder has now: full blocks and the blocks at whose end it holds a snapshot."""

    block_hashes: tuple[bytes, ...] = ()
    snapshot_hashes: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class KvDelta:
    """A net change, applied in field order: clear everything, then removals, then stores.

    Each hash appears at most once per delta, and applying a delta twice equals applying it once (set
    operations), so a subscriber may apply a delta that a snapshot already reflects."""

    cleared: bool = False
    removed: tuple[bytes, ...] = ()
    snapshots_removed: tuple[bytes, ...] = ()
    stored: tuple[bytes, ...] = ()
    snapshots_stored: tuple[bytes, ...] = ()


KvListener = Callable[[KvDelta], None]


class KvChanges:
    """Changes recorded since the last `take()`; the last change of each hash wins."""

    def __init__(self) -> None:
        self._cleared = False
        self._blocks: dict[bytes, bool] = {}  # hash -> held after the change
        self._snapshots: dict[bytes, bool] = {}

    def block(self, block_hash: bytes, held: bool) -> None:
        self._blocks[block_hash] = held

    def snapshot(self, block_hash: bytes, held: bool) -> None:
        self._snapshots[block_hash] = held

    def clear(self) -> None:
        self._cleared = True
        self._blocks.clear()
        self._snapshots.clear()

    def take(self) -> KvDelta | None:
        """The net change since the last call, or None when nothing changed."""
        if not (self._cleared or self._blocks or self._snapshots):
            return None
        blocks, snaps = self._blocks, self._snapshots
        delta = KvDelta(
            self._cleared, _with(blocks, False), _with(snaps, False), _with(blocks, True), _with(snaps, True)
        )
        self._cleared, self._blocks, self._snapshots = False, {}, {}
        return delta


class KvFeed:
    """A holder's changes (`changes`, recorded by the holder) and who hears of them (`flush`)."""

    def __init__(self) -> None:
        self.changes = KvChanges()
        self._listeners: list[KvListener] = []

    def subscribe(self, listener: KvListener) -> None:
        self._listeners.append(listener)

    def flush(self) -> None:
        """Pass the changes recorded since the last flush to every listener (dropped when none listens)."""
        delta = self.changes.take()
        if delta is not None:
            for listener in self._listeners:
                listener(delta)


def _with(changes: dict[bytes, bool], held: bool) -> tuple[bytes, ...]:
    return tuple(h for h, now in changes.items() if now is held)
