"""Linear-state snapshots at block boundaries, keyed by the hash of the block they end.

A snapshot holds, for every linear layer, the recurrent state and the conv tail after exactly that
many tokens. The store is bounded in bytes and evicts least recently used snapshots first.
`on_change(hash, held)`, when set, hears every snapshot put (True) and evicted (False); a store that
`always_hit`s holds none and reports nothing.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True, slots=True)
class LinearSnapshot:
    recurrent: Tensor  # [num_linear_layers, H, K, V] float32
    conv: Tensor  # [num_linear_layers, C, W-1]

    @property
    def nbytes(self) -> int:
        return self.recurrent.nbytes + self.conv.nbytes


class SnapshotStore:
    def __init__(self, capacity_bytes: int, always_hit: bool = False) -> None:
        self.capacity_bytes = capacity_bytes
        self.always_hit = always_hit  # a model without linear layers needs no snapshots
        self._items: OrderedDict[bytes, LinearSnapshot] = OrderedDict()
        self.used_bytes = 0
        self.on_change: Callable[[bytes, bool], None] | None = None

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, block_hash: bytes) -> bool:
        return self.always_hit or block_hash in self._items

    def get(self, block_hash: bytes) -> LinearSnapshot | None:
        snap = self._items.get(block_hash)
        if snap is not None:
            self._items.move_to_end(block_hash)
        return snap

    def put(self, block_hash: bytes, snap: LinearSnapshot) -> None:
        if self.always_hit or snap.nbytes > self.capacity_bytes:
            return
        old = self._items.pop(block_hash, None)
        if old is not None:
            self.used_bytes -= old.nbytes
        self._items[block_hash] = snap
        self.used_bytes += snap.nbytes
        self._changed(block_hash, True)
        while self.used_bytes > self.capacity_bytes:
            evicted_hash, evicted = self._items.popitem(last=False)
            self.used_bytes -= evicted.nbytes
            self._changed(evicted_hash, False)

    def hashes(self) -> list[bytes]:
        """The blocks at whose end a snapshot is held, least recently used first."""
        return list(self._items)

    def _changed(self, block_hash: bytes, held: bool) -> None:
        if self.on_change is not None:
            self.on_change(block_hash, held)
