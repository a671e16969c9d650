"""The router's handle on one cluster: its prefill workers (stubs, and which of them play the prefill role
now) and its cache pool."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import grpc

from prfaas.service.grpc_server import channel
from prfaas.service.tls import TlsSettings
from prfaas.v1 import cachepool_pb2, cachepool_pb2_grpc, prefill_pb2_grpc


class Cluster:
    def __init__(
        self,
        name: str,
        prefill: Sequence[str],
        pool: str,
        members: Callable[[], Sequence[str]] | None = None,
        tls: TlsSettings | None = None,
        copy_timeout_s: float = 30.0,
    ) -> None:
        self.name = name
        self.copy_timeout_s = copy_timeout_s
        self.pool_address = pool
        self.prefill = {a: prefill_pb2_grpc.PrefillServiceStub(channel(a, tls)) for a in prefill}
        self.members = members or (lambda: list(self.prefill))  # workers currently in the prefill role
        self.pool = cachepool_pb2_grpc.CachePoolServiceStub(channel(pool, tls)) if pool else None

    async def copy_prefix_to(self, other: Cluster, tenant: str, hashes: list[bytes]) -> int:
        """Cross-cluster prefix transfer (§3.4.3): blocks this pool holds, put into the other's pool."""
        if self.pool is None or other.pool is None or not hashes:
            return 0
        try:
            got = self.pool.GetBlocks(
                cachepool_pb2.GetBlocksRequest(tenant_id=tenant, block_hashes=hashes), timeout=self.copy_timeout_s
            )
            blocks = [r.block async for r in got]
            puts = (cachepool_pb2.PutBlocksRequest(tenant_id=tenant, block=b) for b in blocks)
            return int((await other.pool.PutBlocks(puts, timeout=self.copy_timeout_s)).stored_bytes)
        except grpc.aio.AioRpcError:
            return 0
