"""Prefill worker settings."""

from __future__ import annotations

from dataclasses import dataclass

from prfaas.kv.wire import DEFAULT_CHUNK_BYTES
from prfaas.service.worker import WorkerSettings


@dataclass(frozen=True)
class PrefillSettings(WorkerSettings):
    """A prefill worker: prefills prompts and streams their state to decode workers."""

    cluster: str = "pd"  # "prfaas" or "pd": which cluster this worker belongs to
    pool: str = ""  # host:port of this cluster's cache pool (optional)
    pool_lookup_timeout_s: float = 2.0  # a pool lookup slower than this is skipped (prefill without the pool)
    pool_transfer_timeout_s: float = 10.0  # fetching blocks from / publishing blocks to the pool
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    transfer_streams: int = 1  # parallel TCP streams per KV transfer (fills long, fat links)
    transfer_timeout_s: float = 120.0
    kv_transport: str = "tcp"  # KV chunks on the decode worker's TCP data plane ("tcp") or in-band on gRPC ("grpc")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.cluster not in ("prfaas", "pd"):
            raise ValueError(f"cluster must be 'prfaas' or 'pd', got {self.cluster!r}")
        if self.kv_transport not in ("tcp", "grpc"):
            raise ValueError(f"kv_transport must be 'tcp' (data plane) or 'grpc' (in-band), got {self.kv_transport!r}")
        if not 1 <= self.transfer_streams <= 16:
            raise ValueError("transfer_streams must be in 1..16")
        if min(self.pool_lookup_timeout_s, self.pool_transfer_timeout_s, self.transfer_timeout_s) <= 0:
            raise ValueError("pool_lookup_timeout_s, pool_transfer_timeout_s and transfer_timeout_s must be positive")
