"""The cluster-level hybrid prefix cache pool (paper §3.2; reference notes §3 and §6.4).

One pool sits beside the engines of a cluster. It holds two kinds of opaque values per tenant:
the full-attention KV of one block (block-level, supports partial prefix matches) and the
linear-state snapshot taken at the end of a block (request-level, usable only at exactly that
boundary). The pool never interprets a value; a hit is the intersection of the two kinds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

from prfaas.kv.changes import KvListener, KvState
from prfaas.kv.prefix import longest_hybrid_prefix
from prfaas.pool.backends import PoolBackend, Record
from prfaas.pool.keys import kv_key, snapshot_key, validate_tenant

_MAX_DEPTH = 2**32 - 1


@dataclass(frozen=True, slots=True)
class BlockEntry:
    """One block of a sequence: its chained hash, its index (0-based) and either value, if any."""

    block_hash: bytes
    depth: int
    kv: bytes | None = None
    snapshot: bytes | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.block_hash, bytes) or not self.block_hash:
            raise ValueError(f"block_hash must be non-empty bytes, got {self.block_hash!r}")
        if not 0 <= self.depth <= _MAX_DEPTH:
            raise ValueError(f"depth must be in [0, {_MAX_DEPTH}], got {self.depth}")


@dataclass(frozen=True, slots=True)
class PoolMatch:
    num_blocks: int
    num_tokens: int


@dataclass(frozen=True, slots=True)
class PoolStats:
    """Backend figures (see its docstring) plus this pool object's match counters.

    A match that finds at least one block is a hit, one that finds none a miss.
    """

    num_entries: int
    used_bytes: int
    capacity_bytes: int | None
    num_hits: int
    num_misses: int
    num_evictions: int


class HybridPrefixPool:
    def __init__(self, backend: PoolBackend) -> None:
        self.backend = backend
        self._num_hits = 0
        self._num_misses = 0

    async def match(self, tenant: str, block_hashes: Sequence[bytes], prompt_len: int, block_size: int) -> PoolMatch:
        """The longest hybrid prefix hit of a prompt whose full blocks chain to `block_hashes`.

        Every full-attention block up to the boundary must be present AND a snapshot must end exactly
        there; the boundary is at most `prompt_len - 1` tokens so one token is left to compute
        (`longest_hybrid_prefix`). Presence is probed in one backend call that does not refresh
        recency: a router matches against every cluster but fetches from one.
        """
        validate_tenant(tenant)
        if block_size <= 0 or prompt_len < 0:
            raise ValueError(f"need block_size > 0 and prompt_len >= 0, got {block_size}, {prompt_len}")
        window = list(block_hashes[: max(0, (prompt_len - 1) // block_size)])
        keys = [kv_key(tenant, h) for h in window] + [snapshot_key(tenant, h) for h in window]
        flags = await self.backend.contains(keys)
        kv = {h for h, f in zip(window, flags[: len(window)], strict=True) if f}
        snaps = {h for h, f in zip(window, flags[len(window) :], strict=True) if f}
        hit = longest_hybrid_prefix(window, prompt_len, block_size, kv.__contains__, snaps.__contains__)
        self._count(hit.num_blocks)
        return PoolMatch(hit.num_blocks, hit.num_tokens)

    async def put_blocks(self, tenant: str, items: Sequence[BlockEntry]) -> int:
        """Store every value present in `items`; returns the value bytes written.

        All items are touched together, so on the memory backend they tie on recency and the deepest
        go first; a value larger than the memory backend's capacity is dropped and not counted.
        """
        validate_tenant(tenant)
        records = [
            Record(key(tenant, item.block_hash), item.depth, value)
            for item in items
            for key, value in ((kv_key, item.kv), (snapshot_key, item.snapshot))
            if value is not None
        ]
        return await self.backend.put(records)

    async def get_blocks(self, tenant: str, block_hashes: Sequence[bytes]) -> list[BlockEntry]:
        """The blocks of `block_hashes`, in order, up to the first block without KV.

        Each entry carries its snapshot when one is stored. Returned values become most recently used.
        """
        validate_tenant(tenant)
        found = await self.backend.get([kv_key(tenant, h) for h in block_hashes])
        prefix = _leading(found)
        snaps = await self.backend.get([snapshot_key(tenant, r.key.block_hash) for r in prefix])
        return [
            BlockEntry(r.key.block_hash, r.depth, r.value, None if s is None else s.value)
            for r, s in zip(prefix, snaps, strict=True)
        ]

    async def get_snapshot(self, tenant: str, block_hash: bytes) -> bytes | None:
        validate_tenant(tenant)
        (record,) = await self.backend.get([snapshot_key(tenant, block_hash)])
        return None if record is None else record.value

    async def stats(self) -> PoolStats:
        usage = await self.backend.usage()
        return PoolStats(
            num_entries=usage.num_entries,
            used_bytes=usage.used_bytes,
            capacity_bytes=usage.capacity_bytes,
            num_hits=self._num_hits,
            num_misses=self._num_misses,
            num_evictions=usage.num_evictions,
        )

    async def clear(self, tenant: str | None = None) -> None:
        """Drop every entry of `tenant`, or of all tenants when None. Counters are kept."""
        await self.backend.clear(None if tenant is None else validate_tenant(tenant))

    def on_kv(self, listener: KvListener) -> None:
        """Call `listener` with every change to what the pool holds (bare block hashes, see the backend)."""
        self.backend.kv.subscribe(listener)

    async def held(self) -> KvState:
        """The blocks and snapshots the pool holds now, of every tenant."""
        return await self.backend.held()

    async def close(self) -> None:
        await self.backend.close()

    async def __aenter__(self) -> HybridPrefixPool:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def _count(self, num_blocks: int) -> None:
        if num_blocks:
            self._num_hits += 1
        else:
            self._num_misses += 1


def _leading(records: Sequence[Record | None]) -> list[Record]:
    prefix = []
    for record in records:
        if record is None:
            break
        prefix.append(record)
    return prefix
