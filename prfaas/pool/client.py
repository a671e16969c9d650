"""A prefill worker's side of its cluster's cache pool: fill the engine's prefix cache from the pool before
a prefill, publish the prompt's new blocks after it. The pool is an accelerator, never a dependency: a
pool that fails or answers slowly means prefilling without it."""

from __future__ import annotations

import asyncio
import logging

import grpc

from prfaas.engine.async_engine import AsyncEngine
from prfaas.engine.engine import PoolBlock
from prfaas.kv.prefix import block_hashes
from prfaas.kv.wire import WireError
from prfaas.v1 import cachepool_pb2, cachepool_pb2_grpc

log = logging.getLogger(__name__)


class PoolClient:
    def __init__(
        self, channel: grpc.aio.Channel, engine: AsyncEngine, lookup_timeout_s: float, transfer_timeout_s: float
    ) -> None:
        self.stub = cachepool_pb2_grpc.CachePoolServiceStub(channel)
        self.engine = engine
        self.lookup_timeout_s, self.transfer_timeout_s = lookup_timeout_s, transfer_timeout_s
        self._publishing: set[asyncio.Task[None]] = set()

    async def fill(self, ids: list[int], salt: bytes, tenant: str, hint_blocks: int | None = None) -> int:
        """Fetch a longer prefix than the engine holds from the pool into the engine's cache; returns the
        pool's hit in blocks (0 when the pool fails). With `hint_blocks` (the router's view of the pool,
        from its state stream) the lookup is skipped: a stale hint only fetches fewer blocks, since the pool
        returns the prefix it still has."""
        hashes = block_hashes(ids, self.engine.info.block_size, salt)
        try:
            hit = await self._lookup(ids, hashes, tenant) if hint_blocks is None else hint_blocks
            local = await self.engine.call(lambda e: e.match_prefix(ids, salt).num_blocks)
            if hit > local:
                request = cachepool_pb2.GetBlocksRequest(tenant_id=tenant, block_hashes=hashes[:hit])
                got = self.stub.GetBlocks(request, timeout=self.transfer_timeout_s)
                blocks = [_block(r.block) async for r in got]
                await self.engine.call(lambda e: e.import_blocks(ids, salt, blocks))
                hit = min(hit, len(blocks))
            return hit
        except (grpc.aio.AioRpcError, WireError) as exc:
            log.warning("cache pool unavailable, prefilling without it: %s", exc)
            return 0

    async def _lookup(self, ids: list[int], hashes: list[bytes], tenant: str) -> int:
        block_size = self.engine.info.block_size
        request = cachepool_pb2.LookupPrefixRequest(
            tenant_id=tenant, block_hashes=hashes, prompt_tokens=len(ids), block_size=block_size
        )
        return int((await self.stub.LookupPrefix(request, timeout=self.lookup_timeout_s)).num_blocks)

    def publish(self, ids: list[int], salt: bytes, tenant: str, skip_blocks: int) -> None:
        """Push this prompt's blocks beyond the first `skip_blocks` to the pool in the background."""
        task = asyncio.create_task(self._put(ids, salt, tenant, skip_blocks))
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    async def _put(self, ids: list[int], salt: bytes, tenant: str, skip_blocks: int) -> None:
        blocks = await self.engine.call(lambda e: e.export_blocks(ids, salt, skip_blocks))
        if not blocks:
            return
        messages = [
            cachepool_pb2.PutBlocksRequest(
                tenant_id=tenant,
                block=cachepool_pb2.PoolBlock(
                    block_hash=b.block_hash, depth=b.depth, kv=b.kv, snapshot=b.snapshot or b""
                ),
            )
            for b in blocks
        ]
        try:
            await self.stub.PutBlocks(iter(messages), timeout=self.transfer_timeout_s)
        except grpc.aio.AioRpcError as exc:
            log.warning("could not publish %d blocks to the cache pool: %s", len(blocks), exc)

    async def close(self) -> None:
        """Wait for the blocks being published."""
        if self._publishing:
            await asyncio.gather(*self._publishing, return_exceptions=True)


def _block(b: cachepool_pb2.PoolBlock) -> PoolBlock:
    return PoolBlock(b.block_hash, b.depth, b.kv, b.snapshot or None)
