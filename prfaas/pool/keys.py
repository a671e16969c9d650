"""Pool keys: every entry is namespaced by its tenant, so equal block hashes never cross tenants.

A key renders as `prfaas:{tenant}:kv:{hash hex}` (the full-attention KV of one block) or
`prfaas:{tenant}:snap:{hash hex}` (the linear-state snapshot taken at the end of that block).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

KEY_PREFIX = "prfaas"
_TENANT_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")


class Kind(enum.Enum):
    KV = "kv"
    SNAPSHOT = "snap"


def validate_tenant(tenant: str) -> str:
    """Return `tenant` unchanged, or raise ValueError if it is not 1-64 chars of [A-Za-z0-9._-]."""
    if not isinstance(tenant, str) or _TENANT_RE.fullmatch(tenant) is None:
        raise ValueError(
            f"invalid tenant id {tenant!r}: use 1-64 characters from [A-Za-z0-9._-] (letters, digits, '.', '_', '-')"
        )
    return tenant


def tenant_prefix(tenant: str) -> str:
    """The prefix shared by every key of `tenant` (ends with ':')."""
    return f"{KEY_PREFIX}:{validate_tenant(tenant)}:"


@dataclass(frozen=True, slots=True)
class PoolKey:
    tenant: str
    kind: Kind
    block_hash: bytes

    def __str__(self) -> str:
        return f"{KEY_PREFIX}:{self.tenant}:{self.kind.value}:{self.block_hash.hex()}"

    def with_kind(self, kind: Kind) -> PoolKey:
        return PoolKey(self.tenant, kind, self.block_hash)


def parse_key(text: str) -> PoolKey | None:
    """The key `str(key)` rendered, or None for a string that is not a pool key."""
    parts = text.split(":")
    kinds = {k.value: k for k in Kind}
    if len(parts) != 4 or parts[0] != KEY_PREFIX or parts[2] not in kinds or not _TENANT_RE.fullmatch(parts[1]):
        return None
    try:
        return PoolKey(parts[1], kinds[parts[2]], _check_hash(bytes.fromhex(parts[3])))
    except ValueError:
        return None


def kv_key(tenant: str, block_hash: bytes) -> PoolKey:
    return PoolKey(tenant, Kind.KV, _check_hash(block_hash))


def snapshot_key(tenant: str, block_hash: bytes) -> PoolKey:
    return PoolKey(tenant, Kind.SNAPSHOT, _check_hash(block_hash))


def _check_hash(block_hash: bytes) -> bytes:
    if not isinstance(block_hash, bytes) or not block_hash:
        raise ValueError(f"block hash must be non-empty bytes, got {block_hash!r}")
    return block_hash
