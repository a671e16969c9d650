"""Where pool entries live: a byte-bounded in-process LRU, or a Redis db shared by many nodes.

Both store opaque values under `PoolKey`s through aiocache, and both answer the same four calls:
`put` and `get` refresh recency, `contains` does not (a router probes every cluster but fetches from
one), and `clear` drops a tenant or everything. Both report what they hold (`held`) and how it changes
(`kv`, a feed of bare block hashes: they are tenant-salted already): puts and clears on both, evictions
only on the memory backend (Redis evicts on its own and tells no one, see `RedisBackend`).
"""

from __future__ import annotations

import asyncio
import struct
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from aiocache import RedisCache, SimpleMemoryCache
from aiocache.serializers import NullSerializer

from prfaas.kv.changes import KvFeed, KvState
from prfaas.pool.keys import KEY_PREFIX, Kind, PoolKey, parse_key, tenant_prefix


@dataclass(frozen=True, slots=True)
class Record:
    key: PoolKey
    depth: int  # index of the block in its sequence, 0-based
    value: bytes


@dataclass(frozen=True, slots=True)
class BackendUsage:
    num_entries: int
    used_bytes: int
    capacity_bytes: int | None  # None: unbounded
    num_evictions: int


class PoolBackend(Protocol):
    kv: KvFeed

    async def put(self, records: Sequence[Record]) -> int: ...
    async def get(self, keys: Sequence[PoolKey]) -> list[Record | None]: ...
    async def contains(self, keys: Sequence[PoolKey]) -> list[bool]: ...
    async def clear(self, tenant: str | None) -> None: ...
    async def usage(self) -> BackendUsage: ...
    async def held(self) -> KvState: ...
    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class _Slot:
    depth: int
    num_bytes: int


class MemoryBackend:
    """Values in aiocache's SimpleMemoryCache; byte accounting and eviction order kept here.

    `used_bytes` counts value bytes only (keys and bookkeeping are not charged). A value larger than
    the whole capacity is not stored.
    """

    def __init__(self, capacity_bytes: int) -> None:
        if capacity_bytes <= 0:
            raise ValueError(f"capacity_bytes must be positive, got {capacity_bytes}")
        self.capacity_bytes = capacity_bytes
        self._values = SimpleMemoryCache(timeout=None)
        self._lru: OrderedDict[PoolKey, _Slot] = OrderedDict()  # head: evicted next
        self._used_bytes = 0
        self._num_evictions = 0
        self._lock = asyncio.Lock()
        self.kv = KvFeed()

    async def put(self, records: Sequence[Record]) -> int:
        kept = [r for r in records if len(r.value) <= self.capacity_bytes]
        async with self._lock:
            await self._values.multi_set([(str(r.key), r.value) for r in kept])
            for r in kept:
                self._forget(r.key)
                self._lru[r.key] = _Slot(r.depth, len(r.value))
                self._used_bytes += len(r.value)
                _record(self.kv, r.key, True)
            self._touch([r.key for r in kept])
            await self._evict()
            self.kv.flush()
        return sum(len(r.value) for r in kept)

    async def get(self, keys: Sequence[PoolKey]) -> list[Record | None]:
        async with self._lock:
            values = await self._values.multi_get([str(k) for k in keys])
            self._touch([k for k, v in zip(keys, values, strict=True) if v is not None])
            return [None if v is None else Record(k, self._lru[k].depth, v) for k, v in zip(keys, values, strict=True)]

    async def contains(self, keys: Sequence[PoolKey]) -> list[bool]:
        return [k in self._lru for k in keys]

    async def clear(self, tenant: str | None) -> None:
        async with self._lock:
            doomed = [k for k in self._lru if tenant is None or k.tenant == tenant]
            for key in doomed:
                self._forget(key)
            await self._values.clear(namespace=tenant_prefix(tenant) if tenant else f"{KEY_PREFIX}:")
            _record_clear(self.kv, tenant, doomed)

    async def usage(self) -> BackendUsage:
        return BackendUsage(len(self._lru), self._used_bytes, self.capacity_bytes, self._num_evictions)

    async def held(self) -> KvState:
        async with self._lock:
            return _state(list(self._lru))

    async def close(self) -> None:
        await self._values.close()

    def eviction_order(self) -> list[PoolKey]:
        """Every stored key, the next one to be evicted first."""
        return list(self._lru)

    def _touch(self, keys: Sequence[PoolKey]) -> None:
        """Make `keys` the most recently used, as one group that ties on recency.

        Within the group the deepest block is placed first (evicted first), and a block's snapshot
        just before its KV, so a shared shallow prefix outlives the deep tails hanging off it.
        """
        for key in sorted(dict.fromkeys(keys), key=lambda k: (-self._lru[k].depth, k.kind is Kind.KV)):
            self._lru.move_to_end(key)

    async def _evict(self) -> None:
        """Evict from the head of the LRU order until the values fit the capacity.

        Order: least recently used first; entries touched by the same call tie, and then the deepest
        block goes first with its snapshot just before its KV (see `_touch`). Evicting a KV block also
        evicts the snapshot at its end, which is useless without it (no hit can end there).
        """
        while self._used_bytes > self.capacity_bytes:
            key = next(iter(self._lru))
            doomed = [key, key.with_kind(Kind.SNAPSHOT)] if key.kind is Kind.KV else [key]
            for k in doomed:
                if self._forget(k):
                    _record(self.kv, k, False)
                    await self._values.delete(str(k))
                    self._num_evictions += 1

    def _forget(self, key: PoolKey) -> bool:
        slot = self._lru.pop(key, None)
        if slot is None:
            return False
        self._used_bytes -= slot.num_bytes
        return True


# Redis values carry their block depth in front of the payload: [depth u32 big-endian | value].
_DEPTH = struct.Struct(">I")
_EXISTS_SCRIPT = "local r = {} for i, k in ipairs(KEYS) do r[i] = redis.call('EXISTS', k) end return r"


class RedisBackend:
    """Entries in a Redis db through aiocache's RedisCache (redis-py asyncio underneath).

    Capacity and eviction belong to Redis, shared by every node on the db: start it with
    `--maxmemory <bytes> --maxmemory-policy allkeys-lru`. Redis then evicts approximately least
    recently used keys (sampled LRU) when a write would pass `maxmemory`. GET/MGET refresh a key's
    recency, EXISTS does not, as in `MemoryBackend`. Unlike `MemoryBackend` there is no deepest-first
    tie break and a snapshot may outlive its KV block; matching stays correct because a hit needs
    every KV block up to the snapshot. Dedicate the db to the pool: `num_entries` is its DBSIZE;
    `used_bytes`, `capacity_bytes` and `num_evictions` are Redis's own used_memory, maxmemory (None
    when 0, unbounded) and evicted_keys. Its `kv` feed reports this backend's puts and clears but not
    Redis's evictions (nor other nodes' puts), so an index fed by it can only over-estimate what the db
    holds: a smaller hit than announced, never a wrong token. `held` lists the keys the db has now (SCAN).
    """

    def __init__(self, host: str, port: int, db: int = 0, password: str | None = None, timeout_s: float = 5.0) -> None:
        self._cache = RedisCache(
            endpoint=host,
            port=port,
            db=db,
            password=password,
            serializer=NullSerializer(encoding=None),
            timeout=timeout_s,
        )
        self.kv = KvFeed()

    async def put(self, records: Sequence[Record]) -> int:
        if records:
            await self._cache.multi_set([(str(r.key), _DEPTH.pack(r.depth) + r.value) for r in records])
        for r in records:
            _record(self.kv, r.key, True)
        self.kv.flush()
        return sum(len(r.value) for r in records)

    async def get(self, keys: Sequence[PoolKey]) -> list[Record | None]:
        if not keys:
            return []
        raws = await self._cache.multi_get([str(k) for k in keys])
        return [_unframe(k, raw) for k, raw in zip(keys, raws, strict=True)]

    async def contains(self, keys: Sequence[PoolKey]) -> list[bool]:
        if not keys:
            return []
        flags = await self._cache.raw("eval", _EXISTS_SCRIPT, len(keys), *[str(k) for k in keys])
        return [bool(f) for f in flags]

    async def clear(self, tenant: str | None) -> None:
        doomed: list[PoolKey] = []
        async for keys in self._scan(tenant):
            await self._cache.raw("unlink", *keys)
            doomed += _parsed(keys)
        _record_clear(self.kv, tenant, doomed)

    async def held(self) -> KvState:
        return _state([key async for keys in self._scan(None) for key in _parsed(keys)])

    async def _scan(self, tenant: str | None) -> AsyncIterator[list[bytes]]:
        """The pool's keys (of `tenant`, or of everyone), a non-empty batch at a time."""
        pattern = (tenant_prefix(tenant) if tenant else f"{KEY_PREFIX}:") + "*"
        cursor: Any = 0
        while True:
            cursor, keys = await self._cache.raw("scan", cursor, match=pattern, count=1000)
            if keys:
                yield keys
            if int(cursor) == 0:
                return

    async def usage(self) -> BackendUsage:
        info = await self._cache.raw("info")
        num_entries = await self._cache.raw("dbsize")
        capacity = int(info["maxmemory"])
        return BackendUsage(int(num_entries), int(info["used_memory"]), capacity or None, int(info["evicted_keys"]))

    async def close(self) -> None:
        await self._cache.client.aclose()  # aiocache's close() calls redis-py's deprecated close()


def _record(feed: KvFeed, key: PoolKey, held: bool) -> None:
    record = feed.changes.block if key.kind is Kind.KV else feed.changes.snapshot
    record(key.block_hash, held)


def _record_clear(feed: KvFeed, tenant: str | None, doomed: Sequence[PoolKey]) -> None:
    """Everything cleared, or only one tenant's keys removed (the other tenants' hashes stay)."""
    if tenant is None:
        feed.changes.clear()
    else:
        for key in doomed:
            _record(feed, key, False)
    feed.flush()


def _state(keys: Sequence[PoolKey]) -> KvState:
    return KvState(
        tuple(k.block_hash for k in keys if k.kind is Kind.KV),
        tuple(k.block_hash for k in keys if k.kind is Kind.SNAPSHOT),
    )


def _parsed(raw_keys: Sequence[bytes | str]) -> list[PoolKey]:
    keys = (parse_key(k.decode() if isinstance(k, bytes) else k) for k in raw_keys)
    return [k for k in keys if k is not None]


def _unframe(key: PoolKey, raw: bytes | None) -> Record | None:
    if raw is None:
        return None
    (depth,) = _DEPTH.unpack_from(raw)
    return Record(key, depth, raw[_DEPTH.size :])
