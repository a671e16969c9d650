"""The router's view of one cluster: its prefill workers and its cache pool."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import grpc

from prfaas.sched.fit import PrefillSample
from prfaas.sched.routing import WorkerView
from prfaas.service.grpc_server import channel
from prfaas.service.tls import TlsSettings
from prfaas.v1 import cachepool_pb2, cachepool_pb2_grpc, prefill_pb2, prefill_pb2_grpc
from services.router.health import Health


@dataclass(frozen=True, slots=True)
class PrefillView:
    worker: WorkerView
    samples: tuple[PrefillSample, ...]


async def gather_ok(coros: Sequence[Awaitable[PrefillView]]) -> list[PrefillView]:
    """Results of the probes that answered; a worker that does not answer is left out."""
    results = await asyncio.gather(*coros, return_exceptions=True)
    return [r for r in results if isinstance(r, PrefillView)]


class Cluster:
    def __init__(
        self,
        name: str,
        prefill: Sequence[str],
        pool: str,
        members: Callable[[], Sequence[str]] | None = None,
        tls: TlsSettings | None = None,
        health: Health | None = None,
        probe_timeout_s: float = 2.0,
        copy_timeout_s: float = 30.0,
    ) -> None:
        self.name = name
        self.probe_timeout_s, self.copy_timeout_s = probe_timeout_s, copy_timeout_s
        self.health = health or Health(1.0, tls)
        self.pool_address = pool
        self.prefill = {a: prefill_pb2_grpc.PrefillServiceStub(channel(a, tls)) for a in prefill}
        self.members = members or (lambda: list(self.prefill))  # workers currently in the prefill role
        self.pool = cachepool_pb2_grpc.CachePoolServiceStub(channel(pool, tls)) if pool else None

    async def cached_tokens(self, tenant: str, hashes: list[bytes], prompt_tokens: int, block_size: int) -> int:
        if self.pool is None or not hashes or not self.health.is_up(self.pool_address):
            return 0  # no pool, or one marked down: serve without the cache until it answers health checks
        req = cachepool_pb2.LookupPrefixRequest(
            tenant_id=tenant, block_hashes=hashes, prompt_tokens=prompt_tokens, block_size=block_size
        )
        try:
            return int((await self.pool.LookupPrefix(req, timeout=self.probe_timeout_s)).num_tokens)
        except grpc.aio.AioRpcError as exc:
            self.health.mark_down(self.pool_address, f"cache pool lookup: {exc.code().name}")
            return 0  # a pool that is down means no cache, not a failed request

    async def views(self) -> list[PrefillView]:
        """Load and recent measurements of every prefill worker that answers."""

        async def probe(addr: str) -> PrefillView:
            resp = await self.prefill[addr].GetLoad(prefill_pb2.GetLoadRequest(), timeout=self.probe_timeout_s)
            samples = tuple(PrefillSample(s.tokens, s.seconds, s.kv_bytes) for s in resp.samples)
            return PrefillView(WorkerView(addr, resp.queue_depth), samples)

        return await gather_ok([probe(a) for a in self.health.up(list(self.members()))])

    def unprobed(self) -> list[PrefillView]:
        """The workers not marked down, load unknown: what to route to when no load probe came back in time
        (an overloaded worker answers slowly but still serves; the attempt's liveness check catches a dead one)."""
        return [PrefillView(WorkerView(a, 0), ()) for a in self.health.up(list(self.members()))]

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
