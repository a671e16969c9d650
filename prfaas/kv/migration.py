"""Producing and applying a sequence's state as wire chunks, against an engine's `HybridCache`.

The exporter is driven by the model's per-layer prefill hook: after layer i has processed tokens up
to `computed_end`, every planned chunk of layer i that is now final leaves at once (full-attention
rows as soon as they are computed, a linear layer's state only after the last prompt token), so the
transfer overlaps with the remaining layers. The importer accepts the planned chunks in any order,
rejects anything else, and says when the state is complete.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from prfaas.kv.cache import HybridCache
from prfaas.kv.spec import LayerSpec
from prfaas.kv.wire import FULL_KV, RECURRENT, ChunkKey, KvChunk, KvManifest, WireError, check_fingerprint

ChunkSink = Callable[[KvChunk], None]


class StateExporter:
    def __init__(self, cache: HybridCache, manifest: KvManifest, sink: ChunkSink) -> None:
        self.cache, self.manifest, self.sink = cache, manifest, sink
        self._pending: dict[int, list[tuple[int, ChunkKey]]] = {}
        for seq, key in enumerate(manifest.plan(cache.spec)):
            self._pending.setdefault(key.layer, []).append((seq, key))

    def on_layer(self, layer: LayerSpec, computed_end: int, block_table: Tensor, slot: int) -> None:
        """Emit this layer's chunks that are final once tokens [0, computed_end) of the sequence whose
        blocks and linear-state slot are given are computed."""
        queue = self._pending.get(layer.index, [])
        while queue and self._ready(queue[0][1], computed_end):
            seq, key = queue.pop(0)
            tensor = self._read(layer, key, block_table, slot)
            self.sink(KvChunk(self.manifest.request_id, self.manifest.epoch, seq, key, tensor))

    def _ready(self, key: ChunkKey, computed_end: int) -> bool:
        if key.kind == FULL_KV:
            return key.row_end <= computed_end
        return computed_end >= self.manifest.num_tokens

    def _read(self, layer: LayerSpec, key: ChunkKey, block_table: Tensor, slot: int) -> Tensor:
        if key.kind == FULL_KV:
            return self.cache.read_full(layer.slot, block_table, key.row_start, key.row_end)
        states = self.cache.recurrent if key.kind == RECURRENT else self.cache.conv
        return states[layer.slot][slot, key.row_start : key.row_end].clone()


class StateImporter:
    def __init__(self, cache: HybridCache, manifest: KvManifest, block_table: Tensor, slot: int) -> None:
        check_fingerprint(cache.spec, manifest)
        plan = manifest.plan(cache.spec)
        if len(plan) != manifest.num_chunks:
            raise WireError(f"manifest announces {manifest.num_chunks} chunks, the plan has {len(plan)}")
        self.cache, self.manifest, self.block_table, self.slot = cache, manifest, block_table, slot
        self._pending = dict(enumerate(plan))

    @property
    def complete(self) -> bool:
        return not self._pending

    @property
    def missing(self) -> int:
        return len(self._pending)

    def apply(self, chunk: KvChunk) -> None:
        m = self.manifest
        if chunk.request_id != m.request_id or chunk.epoch != m.epoch:
            raise WireError(
                f"chunk for {chunk.request_id}@{chunk.epoch} sent to transfer {m.request_id}@{m.epoch} (stale?)"
            )
        key = self._pending.get(chunk.seq)
        if key is None:
            raise WireError(f"chunk {chunk.seq} of {m.request_id}: duplicate or out of plan")
        if key != chunk.key:
            raise WireError(f"chunk {chunk.seq} of {m.request_id}: covers {chunk.key}, plan says {key}")
        self._write(key, chunk.tensor)
        del self._pending[chunk.seq]

    def _write(self, key: ChunkKey, tensor: Tensor) -> None:
        layer = self.cache.spec.layers[key.layer]
        if key.kind == FULL_KV:
            expected: tuple[int, ...] = (key.row_end - key.row_start, self.cache.spec.full_token_dim)
        elif key.kind == RECURRENT:
            expected = (key.row_end - key.row_start, *self.cache.spec.linear_state_shape[1:])
        else:
            expected = (key.row_end - key.row_start, self.cache.spec.linear_conv_shape[1])
        if tuple(tensor.shape) != expected:
            raise WireError(f"chunk {key} has shape {tuple(tensor.shape)}, expected {expected}")
        if key.kind == FULL_KV:
            self.cache.write_full(layer.slot, self.block_table, key.row_start, tensor)
            return
        states = self.cache.recurrent if key.kind == RECURRENT else self.cache.conv
        states[layer.slot][self.slot, key.row_start : key.row_end].copy_(tensor)
