"""Decode worker: registers requests (`Decode`), receives their state (`TransferKv`, served by the
library's `KvReceiver`), decodes them in the shared continuous batch and streams tokens back; publishes
its prefix cache and load (`Watch`)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
from opentelemetry import trace

from prfaas.engine.async_engine import AsyncEngine
from prfaas.engine.engine import Engine
from prfaas.engine.settings import build_engine
from prfaas.engine.validation import InvalidRequest
from prfaas.service.convert import finish_reason_pb, sampling_from_pb, tenant_salt
from prfaas.service.grpc_server import RunningServer, start_server
from prfaas.service.status import abort, refuse
from prfaas.service.worker import WorkerRpcs, worker_info
from prfaas.state import StatePublisher
from prfaas.state.sources import decode_samples, engine_publisher
from prfaas.telemetry import metrics
from prfaas.transfer.dataplane import DataListener
from prfaas.transfer.framing import add_decode_service
from prfaas.transfer.receiver import LEASE_EXPIRED, KvReceiver, Pending, TransferRefused
from prfaas.v1 import decode_pb2, decode_pb2_grpc, state_pb2
from services.decode.settings import DecodeSettings


class DecodeServicer(WorkerRpcs, decode_pb2_grpc.DecodeServiceServicer):
    def __init__(
        self, engine: AsyncEngine, settings: DecodeSettings, state: StatePublisher, data: DataListener | None = None
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.receiver = KvReceiver(engine, settings, data)
        self.state = state
        state.add_load(lambda: state_pb2.LoadReport(registered=len(self.receiver.pending)))

    async def Decode(
        self, request: decode_pb2.DecodeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[decode_pb2.DecodeResponse]:
        try:
            await self.engine.validate(list(request.token_ids), sampling_from_pb(request.sampling))
            pending = await self.receiver.register(request)
        except (InvalidRequest, ValueError) as exc:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except TransferRefused as exc:
            await refuse(context, exc.code, str(exc))
        self.state.report_load()
        try:
            async for msg in self._tokens(pending, context):
                yield msg
        finally:
            self.receiver.unregister(request.request_id)
            self.state.report_load()

    async def _tokens(
        self, pending: Pending, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[decode_pb2.DecodeResponse]:
        """The request's tokens once its state is in; ABORTED if its KV lease runs out first."""
        span = trace.get_current_span()
        first_s: float | None = None
        count = 0
        try:
            async for ev in self.engine.events(pending.request.request_id, pending.events):
                if ev.finish_reason == LEASE_EXPIRED:
                    span.add_event("kv.missing", {"error": pending.lost or ""})
                    await abort(context, grpc.StatusCode.ABORTED, pending.lost or "KV lease expired")
                count += 1
                if first_s is None:
                    first_s = time.perf_counter()
                    span.add_event("decode.admitted", {"kv.bytes": pending.kv_bytes})
                yield decode_pb2.DecodeResponse(
                    token_ids=[ev.token_id],
                    finish_reason=finish_reason_pb(ev.finish_reason),
                    kv_bytes=pending.kv_bytes if ev.index == 0 else 0,
                )
        finally:
            span.set_attribute("gen.tokens", count)
            if first_s is not None and count > 1:
                span.set_attribute("gen.tpot_s", (time.perf_counter() - first_s) / (count - 1))

    async def TransferKv(
        self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[decode_pb2.TransferKvResponse]:
        try:
            async with contextlib.aclosing(self.receiver.receive(request_iterator, context.time_remaining)) as stream:
                async for msg in stream:
                    yield msg
        except TransferRefused as exc:
            await abort(context, exc.code, str(exc))

    async def MatchPrefix(
        self, request: decode_pb2.MatchPrefixRequest, context: grpc.aio.ServicerContext
    ) -> decode_pb2.MatchPrefixResponse:
        salt = tenant_salt(request.tenant_id)
        hit = await self.engine.call(lambda e: e.match_transfer_prefix(list(request.token_ids), salt))
        return decode_pb2.MatchPrefixResponse(cached_tokens=hit.num_tokens)

    async def GetDecodeLoad(
        self, request: decode_pb2.GetDecodeLoadRequest, context: grpc.aio.ServicerContext
    ) -> decode_pb2.GetDecodeLoadResponse:
        active, free = len(self.receiver.pending), self.engine.free_blocks
        metrics.ACTIVE_SEQUENCES.labels("decode").set(active)
        metrics.KV_BLOCKS_FREE.labels("decode").set(free)
        samples = decode_samples(self.engine.decode_steps)
        return decode_pb2.GetDecodeLoadResponse(
            active=active, free_blocks=free, samples=samples, max_seqs=self.engine.info.max_seqs
        )


async def start_receiver(runner: AsyncEngine, settings: DecodeSettings, state: StatePublisher) -> DecodeServicer:
    """The decode role of a worker: its KV data plane (`kv_data_port`, with the gRPC port's TLS), leases, and
    its load in the worker's state stream."""
    tls = settings.tls
    data = await DataListener.start(
        settings.host,
        settings.kv_data_port,
        ssl_context=tls.server_ssl_context() if tls else None,
        max_buffered_bytes=settings.credit_window_bytes,
    )
    servicer = DecodeServicer(runner, settings, state, data)
    servicer.receiver.start_leases()
    return servicer


async def stop_receiver(servicer: DecodeServicer) -> None:
    await servicer.receiver.stop_leases()
    if servicer.receiver.data is not None:
        await servicer.receiver.data.close()


async def build_server(
    settings: DecodeSettings, engine: Engine | None = None
) -> tuple[RunningServer, Callable[[], Awaitable[None]]]:
    """Start a decode worker and its KV data plane; returns the server and a cleanup coroutine (closes the
    data plane, stops the engine)."""
    runner = AsyncEngine(engine or build_engine(settings), "decode-engine", settings.threads)
    runner.start()
    state = engine_publisher(runner, worker_info(settings, runner.info.fingerprint))
    servicer = await start_receiver(runner, settings, state)
    running = await start_server(
        settings.host,
        settings.port,
        [lambda s: add_decode_service(servicer, s)],
        [decode_pb2.DESCRIPTOR.services_by_name["DecodeService"].full_name],
        tls=settings.tls,
    )
    running.servicer = servicer
    running.closing.append(state.close)

    async def cleanup() -> None:
        await stop_receiver(servicer)
        await runner.stop()

    return running, cleanup
