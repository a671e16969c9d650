"""Prefill worker: prefills a prompt (reusing its cached prefix) and streams the state, layer by
layer while later layers compute, to the decode worker the router chose."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable

import grpc

from prfaas.engine.async_engine import AsyncEngine, EngineStopped
from prfaas.engine.engine import Engine, ExportRequest, InvalidRequest, PoolBlock
from prfaas.engine.factory import build_engine
from prfaas.engine.sampling import SamplingParams
from prfaas.kv.prefix import block_hashes
from prfaas.kv.wire import FULL_KV, KvChunk, KvManifest, WireError
from prfaas.service.convert import check_request_id, check_tenant, sampling_from_pb, tenant_salt
from prfaas.service.grpc_server import RunningServer, channel, start_server
from prfaas.service.status import abort, shed
from prfaas.service.tls import service_tls
from prfaas.telemetry import metrics
from prfaas.telemetry.tracing import tracer
from prfaas.transfer.dataplane import data_host
from prfaas.transfer.framing import frame_chunk
from prfaas.transfer.sender import DataPlaneTarget, PreparedExport, TransferError, send_state
from prfaas.v1 import cachepool_pb2, cachepool_pb2_grpc, prefill_pb2, prefill_pb2_grpc
from services.prefill.settings import PrefillSettings

log = logging.getLogger(__name__)


def _block(b: cachepool_pb2.PoolBlock) -> PoolBlock:
    return PoolBlock(b.block_hash, b.depth, b.kv, b.snapshot or None)


class PrefillServicer(prefill_pb2_grpc.PrefillServiceServicer):
    def __init__(self, engine: AsyncEngine, settings: PrefillSettings) -> None:
        self.engine = engine
        self.settings = settings
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._queued_tokens = 0
        self._active = 0
        self._publishing: set[asyncio.Task[None]] = set()
        self._aborting: set[asyncio.Future[bool]] = set()
        self.samples: deque[prefill_pb2.PrefillSample] = deque(maxlen=128)
        self.tls = service_tls(settings)
        self._data_ssl = self.tls.client_ssl_context() if self.tls else None  # data plane: same CA and identity
        self.pool = cachepool_pb2_grpc.CachePoolServiceStub(channel(settings.pool, self.tls)) if settings.pool else None

    async def _fill_from_pool(self, ids: list[int], salt: bytes, tenant: str) -> int:
        """Fetch a longer prefix from the cluster pool into the local cache; returns the pool's hit blocks."""
        if self.pool is None:
            return 0
        hashes = block_hashes(ids, self.engine.engine.spec.block_size, salt)
        try:
            hit = await self.pool.LookupPrefix(
                cachepool_pb2.LookupPrefixRequest(
                    tenant_id=tenant,
                    block_hashes=hashes,
                    prompt_tokens=len(ids),
                    block_size=self.engine.engine.spec.block_size,
                ),
                timeout=2.0,
            )
            local = await self.engine.call(lambda e: e.match_prefix(ids, salt).num_blocks)
            if hit.num_blocks > local:
                request = cachepool_pb2.GetBlocksRequest(tenant_id=tenant, block_hashes=hashes[: hit.num_blocks])
                blocks = [_block(r.block) async for r in self.pool.GetBlocks(request, timeout=10.0)]
                await self.engine.call(lambda e: e.import_blocks(ids, salt, blocks))
            return int(hit.num_blocks)
        except (grpc.aio.AioRpcError, WireError) as exc:
            log.warning("cache pool unavailable, prefilling without it: %s", exc)
            return 0

    def _publish(self, ids: list[int], salt: bytes, tenant: str, skip_blocks: int) -> None:
        """Push this prompt's new blocks to the cluster pool in the background."""
        if self.pool is None:
            return
        task = asyncio.create_task(self._put(ids, salt, tenant, skip_blocks))
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    async def _put(self, ids: list[int], salt: bytes, tenant: str, skip_blocks: int) -> None:
        assert self.pool is not None
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
            await self.pool.PutBlocks(iter(messages), timeout=10.0)
        except grpc.aio.AioRpcError as exc:
            log.warning("could not publish %d blocks to the cache pool: %s", len(blocks), exc)

    def _decode_channel(self, address: str) -> grpc.aio.Channel:
        if address not in self._channels:
            self._channels[address] = channel(address, self.tls)
        return self._channels[address]

    def _data_plane(self, decode_address: str) -> DataPlaneTarget | None:
        """`kv_transport=tcp`: chunks on the decode worker's data plane (same host as its gRPC port)."""
        if self.settings.kv_transport != "tcp":
            return None
        return DataPlaneTarget(data_host(decode_address), self._data_ssl)

    def _abandon(self, rid: str) -> None:
        """Stop computing a request whose transfer failed or was cancelled: one admitted before its first
        token was awaited would otherwise run to the end for nobody, holding blocks and the engine."""
        self.engine.close_stream(rid)

        async def abort_it() -> bool:
            with contextlib.suppress(EngineStopped):
                return await self.engine.call(lambda e: e.abort(rid))
            return False

        task = asyncio.ensure_future(abort_it())
        self._aborting.add(task)
        task.add_done_callback(self._aborting.discard)

    async def close(self) -> None:
        if self._publishing:
            await asyncio.gather(*self._publishing, return_exceptions=True)
        for ch in self._channels.values():
            await ch.close()

    async def Prefill(
        self, request: prefill_pb2.PrefillRequest, context: grpc.aio.ServicerContext
    ) -> prefill_pb2.PrefillResponse:
        ids = list(request.token_ids)
        try:
            check_request_id(request.request_id)
            check_tenant(request.tenant_id)
            params = sampling_from_pb(request.sampling)
            await self.engine.call(lambda e: e.validate(ids, params))
        except (InvalidRequest, ValueError) as exc:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if not request.decode_address:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "decode_address is required")
        if self._active >= self.settings.max_queued_requests:
            await shed(context, f"prefill worker has {self._active} requests queued or running (max_queued_requests)")
        self._active += 1
        self._queued_tokens += len(ids)
        try:
            return await self._prefill(request, ids, params)
        except TransferError as exc:
            if exc.code == grpc.StatusCode.RESOURCE_EXHAUSTED:  # the decode worker stayed full: pass its overload on
                await shed(context, f"KV transfer to {request.decode_address} refused: {exc}")
            await abort(context, grpc.StatusCode.UNAVAILABLE, f"KV transfer to {request.decode_address} failed: {exc}")
        except grpc.aio.AioRpcError as exc:  # the decode worker refused the transfer: pass its status on
            await abort(context, exc.code(), f"KV transfer to {request.decode_address}: {exc.details()}")
        except InvalidRequest as exc:
            await abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        finally:
            self._active -= 1
            self._queued_tokens -= len(ids)

    async def _prefill(
        self, request: prefill_pb2.PrefillRequest, ids: list[int], params: SamplingParams
    ) -> prefill_pb2.PrefillResponse:
        rid, epoch, salt = request.request_id, request.epoch, tenant_salt(request.tenant_id)
        timing: dict[str, float] = {"arrival": time.perf_counter()}
        pool_blocks = await self._fill_from_pool(ids, salt, request.tenant_id)
        events = self.engine.open_stream(rid)
        loop = asyncio.get_running_loop()
        # What the last layer produces in the final prefill step must still travel after prefill ends.
        last_layer = self.engine.engine.spec.layers[-1].index
        step = self.engine.engine.config.max_prefill_tokens
        final_start = (len(ids) - 1) // step * step

        async def prepare(start_tokens: int) -> PreparedExport:
            chunks: asyncio.Queue[bytes] = asyncio.Queue()

            def sink(chunk: KvChunk) -> None:  # runs on the engine thread
                if chunk.key.layer == last_layer and (chunk.key.kind != FULL_KV or chunk.key.row_end > final_start):
                    timing["last_layer_bytes"] = timing.get("last_layer_bytes", 0) + chunk.tensor.nbytes
                prefill_span.add_event(
                    "kv.chunk", {"layer": chunk.key.layer, "kind": chunk.key.kind, "rows": chunk.key.row_end}
                )
                loop.call_soon_threadsafe(chunks.put_nowait, frame_chunk(chunk))  # CRC + the one copy, off the loop

            export = ExportRequest(
                sink,
                start_tokens,
                epoch,
                self.settings.chunk_bytes,
            )

            def admit(e: Engine) -> KvManifest:
                timing["admitted"] = time.perf_counter()
                timing["cached"] = e.match_prefix(ids, salt).num_tokens
                e.add_request(ids, params, rid, salt, export)
                return e.manifest(rid)

            manifest = await self.engine.call(admit)
            return PreparedExport(manifest, chunks, first_token())

        async def first_token() -> int:
            async for ev in self.engine.events(rid, events):
                timing.setdefault("first", time.perf_counter())
                if ev.finish_reason is not None:
                    prefill_span.end()  # the prefill computation is over; the transfer's tail follows
                    return ev.token_id
            raise TransferError("prefill ended without a token")

        stub = self._decode_channel(request.decode_address)
        with tracer().start_as_current_span("kv.transfer") as span:
            prefill_span = tracer().start_span("prefill", attributes={"prfaas.prompt_tokens": len(ids)})
            try:
                stats = await send_state(
                    stub,
                    rid,
                    epoch,
                    self.engine.engine.spec.fingerprint(),
                    prepare,
                    self.settings.transfer_timeout_s,
                    self.settings.transfer_streams,
                    self._data_plane(request.decode_address),
                )
            except BaseException:
                self._abandon(rid)
                raise
            finally:
                if prefill_span.is_recording():
                    prefill_span.end()
            span.set_attributes(
                {
                    "kv.bytes": stats.kv_bytes,
                    "kv.chunks": stats.num_chunks,
                    "kv.streams": stats.num_streams,
                    "kv.transport": stats.transport,
                    "kv.duration_s": stats.transfer_s,
                    "kv.gbps": stats.kv_bytes * 8 / max(stats.transfer_s, 1e-9) / 1e9,
                    "kv.stalled_s": stats.stalled_s,
                    "kv.receiver_cached_tokens": stats.receiver_cached_tokens,
                    "prfaas.cached_tokens": int(timing.get("cached", 0)),
                }
            )
        done = time.perf_counter()
        self._publish(ids, salt, request.tenant_id, pool_blocks)
        admitted = timing.get("admitted", timing["arrival"])
        first = timing.get("first", done)
        computed = len(ids) - int(timing.get("cached", 0))
        metrics.PREFILL_SECONDS.labels(self.settings.cluster).observe(first - admitted)
        metrics.KV_TRANSFER_STALL_SECONDS.inc(stats.stalled_s)
        self.samples.append(
            prefill_pb2.PrefillSample(tokens=computed, seconds=first - admitted, kv_bytes=stats.kv_bytes)
        )
        return prefill_pb2.PrefillResponse(
            first_token_id=stats.first_token_id,
            cached_tokens=int(timing.get("cached", 0)),
            receiver_cached_tokens=stats.receiver_cached_tokens,
            kv_bytes=stats.kv_bytes,
            num_chunks=stats.num_chunks,
            transfer_s=stats.transfer_s,
            prefill_s=first - admitted,
            queue_s=admitted - timing["arrival"],
            tail_s=done - first,
            last_layer_bytes=int(timing.get("last_layer_bytes", 0)),
            num_streams=stats.num_streams,
            stalled_s=stats.stalled_s,
        )

    async def GetLoad(
        self, request: prefill_pb2.GetLoadRequest, context: grpc.aio.ServicerContext
    ) -> prefill_pb2.GetLoadResponse:
        metrics.QUEUE_DEPTH.labels(f"prefill-{self.settings.cluster}", "prefill").set(self._active)
        metrics.KV_BLOCKS_FREE.labels(f"prefill-{self.settings.cluster}").set(self.engine.engine.cache.blocks.num_free)
        return prefill_pb2.GetLoadResponse(
            queue_depth=self._active,
            queued_tokens=self._queued_tokens,
            free_blocks=self.engine.engine.cache.blocks.num_free,
            samples=list(self.samples),
        )


async def build_server(
    settings: PrefillSettings, engine: Engine | None = None
) -> tuple[RunningServer, Callable[[], Awaitable[None]]]:
    """Start a prefill worker; returns the server and a cleanup coroutine."""
    runner = AsyncEngine(engine or build_engine(settings), "prefill-engine", settings.threads)
    runner.start()
    servicer = PrefillServicer(runner, settings)
    running = await start_server(
        settings.host,
        settings.port,
        [lambda s: prefill_pb2_grpc.add_PrefillServiceServicer_to_server(servicer, s)],
        [prefill_pb2.DESCRIPTOR.services_by_name["PrefillService"].full_name],
        tls=servicer.tls,
    )
    running.servicer = servicer

    async def cleanup() -> None:
        await servicer.close()
        await runner.stop()

    return running, cleanup
