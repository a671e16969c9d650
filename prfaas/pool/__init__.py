"""Cluster-level hybrid prefix cache pool: full-attention KV blocks and linear-state snapshots."""

from prfaas.pool.backends import MemoryBackend, PoolBackend, RedisBackend
from prfaas.pool.factory import make_pool
from prfaas.pool.keys import validate_tenant
from prfaas.pool.pool import BlockEntry, HybridPrefixPool, PoolMatch, PoolStats

__all__ = [
    "BlockEntry",
    "HybridPrefixPool",
    "MemoryBackend",
    "PoolBackend",
    "PoolMatch",
    "PoolStats",
    "RedisBackend",
    "make_pool",
    "validate_tenant",
]
