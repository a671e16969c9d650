"""Physical storage for an engine's hybrid state.

Full-attention layers: one paged tensor per layer, `[num_blocks, block_size, D]`, addressed through
per-sequence block tables. Linear layers: one slot per running sequence in `[max_seqs, H, K, V]`
(recurrent, float32) and `[max_seqs, C, W-1]` (conv tail) tensors, so a decode batch gathers its
states with one index per layer.
"""

from __future__ import annotations

import torch
from torch import Tensor

from prfaas.kv.block_pool import BlockPool
from prfaas.kv.changes import KvChanges, KvState
from prfaas.kv.snapshots import LinearSnapshot, SnapshotStore
from prfaas.kv.spec import HybridSpec


class OutOfSlots(RuntimeError):
    """Every linear-state slot is taken by a running sequence."""


class HybridCache:
    def __init__(self, spec: HybridSpec, num_blocks: int, max_seqs: int, snapshot_bytes: int) -> None:
        self.spec = spec
        bs, d = spec.block_size, spec.full_token_dim
        self.full = [torch.zeros(num_blocks, bs, d, dtype=spec.dtype) for _ in spec.full_layers]
        self.recurrent = [torch.zeros(max_seqs, *spec.linear_state_shape) for _ in spec.linear_layers]
        self.conv = [torch.zeros(max_seqs, *spec.linear_conv_shape, dtype=spec.dtype) for _ in spec.linear_layers]
        self.blocks = BlockPool(num_blocks)
        self.snapshots = SnapshotStore(snapshot_bytes, always_hit=not spec.linear_layers)
        self._free_slots = list(range(max_seqs - 1, -1, -1))
        self.max_seqs = max_seqs

    # -- what the prefix cache holds ----------------------------------------------------------------
    def track_changes(self) -> KvChanges:
        """Record, from now on, every full block registered or forgotten and every snapshot put or
        evicted; the caller takes them (`KvChanges.take`) regularly."""
        changes = KvChanges()
        self.blocks.on_change = changes.block
        self.snapshots.on_change = changes.snapshot
        return changes

    def held(self) -> KvState:
        return KvState(tuple(self.blocks.cached_hashes()), tuple(self.snapshots.hashes()))

    # -- linear-state slots -------------------------------------------------------------------------
    @property
    def num_free_slots(self) -> int:
        return len(self._free_slots)

    def take_slot(self) -> int:
        if not self._free_slots:
            raise OutOfSlots(f"all {self.max_seqs} sequence slots are in use")
        slot = self._free_slots.pop()
        self.reset_slot(slot)
        return slot

    def release_slot(self, slot: int) -> None:
        self._free_slots.append(slot)

    def reset_slot(self, slot: int) -> None:
        for rec, conv in zip(self.recurrent, self.conv, strict=True):
            rec[slot].zero_()
            conv[slot].zero_()

    def snapshot(self, slot: int) -> LinearSnapshot:
        return LinearSnapshot(
            torch.stack([rec[slot] for rec in self.recurrent]) if self.recurrent else torch.empty(0),
            torch.stack([conv[slot] for conv in self.conv]) if self.conv else torch.empty(0),
        )

    def restore(self, slot: int, snap: LinearSnapshot) -> None:
        for i, (rec, conv) in enumerate(zip(self.recurrent, self.conv, strict=True)):
            rec[slot].copy_(snap.recurrent[i])
            conv[slot].copy_(snap.conv[i])

    # -- paged full-attention KV --------------------------------------------------------------------
    def _flat_index(self, block_table: Tensor, start: int, end: int) -> Tensor:
        pos = torch.arange(start, end)
        bs = self.spec.block_size
        return block_table[pos // bs] * bs + pos % bs

    def write_full(self, layer: int, block_table: Tensor, start: int, values: Tensor) -> None:
        """Store entries for tokens start..start+len(values)-1 of one sequence."""
        idx = self._flat_index(block_table, start, start + values.shape[0])
        self.full[layer].view(-1, self.spec.full_token_dim).index_copy_(0, idx, values.to(self.spec.dtype))

    def read_full(self, layer: int, block_table: Tensor, start: int, end: int) -> Tensor:
        """Entries for tokens start..end-1 of one sequence, [end - start, D]."""
        idx = self._flat_index(block_table, start, end)
        return self.full[layer].view(-1, self.spec.full_token_dim).index_select(0, idx)

    def write_full_batch(self, layer: int, flat_index: Tensor, values: Tensor) -> None:
        """One entry per sequence at precomputed flat positions (block * block_size + offset)."""
        self.full[layer].view(-1, self.spec.full_token_dim).index_copy_(0, flat_index, values.to(self.spec.dtype))

    def gather_full_batch(self, layer: int, block_tables: Tensor) -> Tensor:
        """[B, max_blocks] block tables -> [B, max_blocks * block_size, D] (padding rows are junk)."""
        pages = self.full[layer][block_tables]  # [B, nb, bs, D]
        return pages.view(block_tables.shape[0], -1, self.spec.full_token_dim)
