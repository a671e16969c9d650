"""Cache pool service: a thin gRPC shell over `HybridPrefixPool`, publishing what it holds (`Watch`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
from opentelemetry import trace

from prfaas.pool import BlockEntry, HybridPrefixPool, make_pool
from prfaas.service.grpc_server import RunningServer, start_server
from prfaas.service.status import abort
from prfaas.service.tls import service_tls
from prfaas.service.watch import serve_watch
from prfaas.state import StatePublisher
from prfaas.state.sources import pool_publisher
from prfaas.v1 import cachepool_pb2, cachepool_pb2_grpc, state_pb2
from services.cachepool.settings import CachePoolSettings

DEFAULT_TENANT = "default"


def _tenant(tenant_id: str) -> str:
    return tenant_id or DEFAULT_TENANT


def _entry(block: cachepool_pb2.PoolBlock) -> BlockEntry:
    return BlockEntry(block.block_hash, block.depth, block.kv or None, block.snapshot or None)


class CachePoolServicer(cachepool_pb2_grpc.CachePoolServiceServicer):
    def __init__(self, pool: HybridPrefixPool, state: StatePublisher) -> None:
        self.pool = pool
        self.state = state

    async def LookupPrefix(
        self, request: cachepool_pb2.LookupPrefixRequest, context: grpc.aio.ServicerContext
    ) -> cachepool_pb2.LookupPrefixResponse:
        if request.block_size == 0 or request.prompt_tokens == 0:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "block_size and prompt_tokens must be positive")
        try:
            hit = await self.pool.match(
                _tenant(request.tenant_id), list(request.block_hashes), request.prompt_tokens, request.block_size
            )
        except ValueError as exc:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        trace.get_current_span().set_attribute("pool.hit_tokens", hit.num_tokens)
        return cachepool_pb2.LookupPrefixResponse(num_blocks=hit.num_blocks, num_tokens=hit.num_tokens)

    async def PutBlocks(
        self, request_iterator: AsyncIterator[cachepool_pb2.PutBlocksRequest], context: grpc.aio.ServicerContext
    ) -> cachepool_pb2.PutBlocksResponse:
        stored = 0
        try:
            async for msg in request_iterator:
                stored += await self.pool.put_blocks(_tenant(msg.tenant_id), [_entry(msg.block)])
        except ValueError as exc:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return cachepool_pb2.PutBlocksResponse(stored_bytes=stored)

    async def GetBlocks(
        self, request: cachepool_pb2.GetBlocksRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[cachepool_pb2.GetBlocksResponse]:
        try:
            blocks = await self.pool.get_blocks(_tenant(request.tenant_id), list(request.block_hashes))
        except ValueError as exc:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        for b in blocks:
            yield cachepool_pb2.GetBlocksResponse(
                block=cachepool_pb2.PoolBlock(
                    block_hash=b.block_hash, depth=b.depth, kv=b.kv or b"", snapshot=b.snapshot or b""
                )
            )

    async def GetStats(
        self, request: cachepool_pb2.GetStatsRequest, context: grpc.aio.ServicerContext
    ) -> cachepool_pb2.GetStatsResponse:
        s = await self.pool.stats()
        return cachepool_pb2.GetStatsResponse(
            entries=s.num_entries,
            used_bytes=s.used_bytes,
            capacity_bytes=s.capacity_bytes or 0,
            hits=s.num_hits,
            misses=s.num_misses,
            evictions=s.num_evictions,
        )

    async def Watch(
        self, request: state_pb2.WatchRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[state_pb2.StateEvent]:
        async for event in serve_watch(self.state, context):
            yield event


async def build_server(settings: CachePoolSettings) -> tuple[RunningServer, Callable[[], Awaitable[None]]]:
    pool = make_pool(settings.backend)
    state = pool_publisher(pool)
    servicer = CachePoolServicer(pool, state)
    running = await start_server(
        settings.host,
        settings.port,
        [lambda s: cachepool_pb2_grpc.add_CachePoolServiceServicer_to_server(servicer, s)],
        [cachepool_pb2.DESCRIPTOR.services_by_name["CachePoolService"].full_name],
        tls=service_tls(settings),
    )
    running.servicer = servicer
    running.closing.append(state.close)
    return running, pool.close
