"""Prefill worker: prefills a prompt (reusing its cached prefix, from the cluster pool too) and streams
the state, layer by layer while later layers compute, to the decode worker the router chose
(`prfaas.transfer.export`); publishes its prefix cache and load (`Watch`)."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable

import grpc

from prfaas.engine.async_engine import AsyncEngine
from prfaas.engine.engine import Engine
from prfaas.engine.settings import build_engine
from prfaas.engine.validation import InvalidRequest
from prfaas.pool.client import PoolClient
from prfaas.service.convert import check_request_id, check_tenant, sampling_from_pb, tenant_salt
from prfaas.service.grpc_server import RunningServer, channel, start_server
from prfaas.service.status import abort, shed
from prfaas.service.worker import WorkerRpcs, worker_info
from prfaas.state import StatePublisher
from prfaas.state.sources import engine_publisher
from prfaas.telemetry import metrics
from prfaas.transfer.dataplane import data_host
from prfaas.transfer.export import ExportJob, ExportTarget, ExportTiming, export_state
from prfaas.transfer.sender import DataPlaneTarget, TransferError, TransferStats
from prfaas.v1 import prefill_pb2, prefill_pb2_grpc, state_pb2
from services.prefill.settings import PrefillSettings


class PrefillServicer(WorkerRpcs, prefill_pb2_grpc.PrefillServiceServicer):
    def __init__(self, engine: AsyncEngine, settings: PrefillSettings, state: StatePublisher) -> None:
        self.engine = engine
        self.settings = settings
        self.state = state
        self.tls = settings.tls
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._queued_tokens = 0
        self._active = 0
        self._aborting: set[asyncio.Future[bool]] = set()
        self.samples: deque[state_pb2.PrefillSample] = deque(maxlen=128)
        self._data_ssl = self.tls.client_ssl_context() if self.tls else None  # data plane: same CA and identity
        self.pool = (
            PoolClient(
                channel(settings.pool, self.tls),
                engine,
                settings.pool_lookup_timeout_s,
                settings.pool_transfer_timeout_s,
            )
            if settings.pool
            else None
        )
        state.add_load(self._load)

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()
        for ch in self._channels.values():
            await ch.close()

    async def Prefill(
        self, request: prefill_pb2.PrefillRequest, context: grpc.aio.ServicerContext
    ) -> prefill_pb2.PrefillResponse:
        try:
            job = await self._job(request)
        except (InvalidRequest, ValueError) as exc:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if self._active >= self.settings.max_queued_requests:
            await shed(context, f"prefill worker has {self._active} requests queued or running (max_queued_requests)")
        self._active += 1
        self._queued_tokens += len(job.token_ids)
        self.state.report_load()
        try:
            return await self._prefill(job, request)
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
            self._queued_tokens -= len(job.token_ids)
            self.state.report_load()

    async def _job(self, request: prefill_pb2.PrefillRequest) -> ExportJob:
        """The request as a job for this engine; raises ValueError / InvalidRequest naming what to fix."""
        check_request_id(request.request_id)
        check_tenant(request.tenant_id)
        ids, params = list(request.token_ids), sampling_from_pb(request.sampling)
        await self.engine.validate(ids, params)
        if not request.decode_address:
            raise ValueError("decode_address is required")
        return ExportJob(request.request_id, request.epoch, ids, params, tenant_salt(request.tenant_id))

    async def _prefill(self, job: ExportJob, request: prefill_pb2.PrefillRequest) -> prefill_pb2.PrefillResponse:
        """Fill the prefix cache from the pool, prefill and ship the state, publish the new blocks."""
        arrival = time.perf_counter()
        tenant = request.tenant_id
        hint = request.pool_hit_blocks if request.pool_hint else None
        pool_blocks = await self.pool.fill(job.token_ids, job.salt, tenant, hint) if self.pool else 0
        target = self._target(request.decode_address)
        stats, timing = await export_state(self.engine, job, target, arrival, self._aborting)
        done = time.perf_counter()
        if self.pool is not None:
            self.pool.publish(job.token_ids, job.salt, tenant, pool_blocks)
        self._record(len(job.token_ids), stats, timing, done)
        return _response(stats, timing, done)

    def _target(self, decode_address: str) -> ExportTarget:
        """The decode worker's channel; with `kv_transport=tcp` its data plane (same host as its gRPC port)."""
        if decode_address not in self._channels:
            self._channels[decode_address] = channel(decode_address, self.tls)
        tcp = self.settings.kv_transport == "tcp"
        return ExportTarget(
            self._channels[decode_address],
            self.settings.transfer_timeout_s,
            self.settings.chunk_bytes,
            self.settings.transfer_streams,
            DataPlaneTarget(data_host(decode_address), self._data_ssl) if tcp else None,
        )

    def _record(self, prompt_tokens: int, stats: TransferStats, timing: ExportTiming, done: float) -> None:
        """Metrics, and a sample for the router's profile fit (tokens computed vs seconds)."""
        prefill_s = timing.prefill_s(done)
        metrics.PREFILL_SECONDS.labels(self.settings.cluster).observe(prefill_s)
        metrics.KV_TRANSFER_STALL_SECONDS.inc(stats.stalled_s)
        computed = prompt_tokens - timing.cached_tokens
        self.samples.append(state_pb2.PrefillSample(tokens=computed, seconds=prefill_s, kv_bytes=stats.kv_bytes))

    async def GetLoad(
        self, request: prefill_pb2.GetLoadRequest, context: grpc.aio.ServicerContext
    ) -> prefill_pb2.GetLoadResponse:
        free = self.engine.free_blocks
        metrics.QUEUE_DEPTH.labels(f"prefill-{self.settings.cluster}", "prefill").set(self._active)
        metrics.KV_BLOCKS_FREE.labels(f"prefill-{self.settings.cluster}").set(free)
        return prefill_pb2.GetLoadResponse(
            queue_depth=self._active, queued_tokens=self._queued_tokens, free_blocks=free, samples=list(self.samples)
        )

    def _load(self) -> state_pb2.LoadReport:
        """The prefill role's part of the worker's load."""
        return state_pb2.LoadReport(
            queue_depth=self._active, queued_tokens=self._queued_tokens, prefill_samples=list(self.samples)
        )


def _response(stats: TransferStats, timing: ExportTiming, done: float) -> prefill_pb2.PrefillResponse:
    first = timing.first_s or done
    return prefill_pb2.PrefillResponse(
        first_token_id=stats.first_token_id,
        cached_tokens=timing.cached_tokens,
        receiver_cached_tokens=stats.receiver_cached_tokens,
        kv_bytes=stats.kv_bytes,
        num_chunks=stats.num_chunks,
        transfer_s=stats.transfer_s,
        prefill_s=timing.prefill_s(done),
        queue_s=timing.queue_s,
        tail_s=done - first,
        last_layer_bytes=timing.last_layer_bytes,
        num_streams=stats.num_streams,
        stalled_s=stats.stalled_s,
    )


async def build_server(
    settings: PrefillSettings, engine: Engine | None = None
) -> tuple[RunningServer, Callable[[], Awaitable[None]]]:
    """Start a prefill worker; returns the server and a cleanup coroutine."""
    runner = AsyncEngine(engine or build_engine(settings), "prefill-engine", settings.threads)
    runner.start()
    state = engine_publisher(runner, worker_info(settings, runner.info.fingerprint))
    servicer = PrefillServicer(runner, settings, state)
    running = await start_server(
        settings.host,
        settings.port,
        [lambda s: prefill_pb2_grpc.add_PrefillServiceServicer_to_server(servicer, s)],
        [prefill_pb2.DESCRIPTOR.services_by_name["PrefillService"].full_name],
        tls=servicer.tls,
    )
    running.servicer = servicer
    running.closing.append(state.close)

    async def cleanup() -> None:
        await servicer.close()
        await runner.stop()

    return running, cleanup
