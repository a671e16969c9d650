"""Decode worker: registers requests (`Decode`), receives their state (`TransferKv`), decodes them in
the shared continuous batch and streams tokens back."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import grpc
from google.protobuf.message import DecodeError
from opentelemetry import trace

from prfaas.engine.async_engine import AsyncEngine, EngineStopped
from prfaas.engine.engine import Engine, EngineFull, InvalidRequest
from prfaas.engine.factory import build_engine
from prfaas.engine.sequence import TokenEvent
from prfaas.kv.wire import KvChunk, KvManifest, WireError
from prfaas.service.convert import finish_reason_pb, sampling_from_pb, tenant_salt
from prfaas.service.grpc_server import RunningServer, start_server
from prfaas.service.status import abort, shed
from prfaas.service.tls import service_tls
from prfaas.telemetry import metrics
from prfaas.transfer.dataplane import DataListener, DataOffer, DataPlaneError
from prfaas.transfer.framing import add_decode_service, parse_request
from prfaas.transfer.merge import merge
from prfaas.v1 import decode_pb2, decode_pb2_grpc
from services.decode.settings import DecodeSettings

log = logging.getLogger(__name__)
LEASE_EXPIRED = "kv_lease_expired"  # finish reason of the event that ends a Decode stream whose lease ran out


@dataclass(eq=False, slots=True)
class Pending:
    """A registered request waiting for (or receiving) its state."""

    request: decode_pb2.DecodeRequest
    events: asyncio.Queue[TokenEvent]
    importing: asyncio.Event = field(default_factory=asyncio.Event)  # set once the manifest is accepted
    kv_bytes: int = 0
    renewed_s: float = field(default_factory=time.monotonic)  # last sign of life of its transfer (see `_expired`)
    committed: bool = False  # the whole state arrived: it decodes, no lease any more
    streams: int = 0  # transfer streams open for it: the sender is alive, the lease does not run
    lost: str | None = None  # why its state will never arrive (the lease expired)


class DecodeServicer(decode_pb2_grpc.DecodeServiceServicer):
    def __init__(self, engine: AsyncEngine, settings: DecodeSettings, data: DataListener | None = None) -> None:
        self.engine = engine
        self.settings = settings
        self.data = data  # the KV data plane; without it every transfer carries its chunks in-band
        self._background: set[asyncio.Future[None]] = set()
        self.pending: dict[str, Pending] = {}
        self._registered = asyncio.Condition()
        self._admitting = asyncio.Lock()  # transfers waiting for room in the engine, first come first served
        self._reaper: asyncio.Task[None] | None = None

    def start_leases(self) -> None:
        self._reaper = asyncio.create_task(self._reap_leases())

    async def stop_leases(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper

    def _expired(self, now_s: float) -> list[Pending]:
        """KV lease rule: a registered request whose state is not complete holds a lease of `kv_lease_s`.
        It does not run while a transfer stream for the request is open (the sender is alive, perhaps queued
        behind other prefills; a dead sender breaks the stream, a cut-off one hits its transfer deadline) and
        is renewed by every sign of the transfer (registration, open, manifest, each chunk, a stream's end).
        A lease that runs out means no sender came or it is gone: the request's blocks and slot are freed and
        its Decode stream ends with ABORTED, so neither memory nor a caller waits forever."""
        lease_s = self.settings.kv_lease_s
        live = [p for p in self.pending.values() if not p.committed and p.lost is None and not p.streams]
        return [p for p in live if now_s - p.renewed_s > lease_s]

    async def _reap_leases(self) -> None:
        while True:
            await asyncio.sleep(self.settings.kv_lease_s / 4)
            for pending in self._expired(time.monotonic()):
                rid = pending.request.request_id
                lease_s = self.settings.kv_lease_s
                pending.lost = f"KV state of {rid} expected but not received within the {lease_s:g}s lease"
                metrics.KV_TRANSFERS_MISSING.inc()
                with contextlib.suppress(EngineStopped):
                    await self.engine.call(lambda e, rid=rid: e.abort(rid))  # type: ignore[misc]
                pending.events.put_nowait(TokenEvent(rid, 0, 0, LEASE_EXPIRED))

    async def Decode(
        self, request: decode_pb2.DecodeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[decode_pb2.DecodeResponse]:
        rid = request.request_id
        if not rid or rid in self.pending:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"request id {rid!r} is empty or already in use")
        try:
            params = sampling_from_pb(request.sampling)
            await self.engine.call(lambda e: e.validate(list(request.token_ids), params))
        except (InvalidRequest, ValueError) as exc:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if len(self.pending) >= self.settings.max_queued_requests:
            await shed(context, f"decode worker has {len(self.pending)} requests registered (max_queued_requests)")
        pending = Pending(request, self.engine.open_stream(rid))
        async with self._registered:
            self.pending[rid] = pending
            self._registered.notify_all()
        span = trace.get_current_span()
        first_s: float | None = None
        count = 0
        try:
            async for ev in self.engine.events(rid, pending.events):
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
            self.pending.pop(rid, None)
            span.set_attribute("gen.tokens", count)
            if first_s is not None and count > 1:
                span.set_attribute("gen.tpot_s", (time.perf_counter() - first_s) / (count - 1))

    async def _wait_registered(self, rid: str) -> Pending | None:
        async with self._registered:
            ok = await _wait_for(self._registered, lambda: rid in self.pending, self.settings.register_timeout_s)
        return self.pending.get(rid) if ok else None

    async def TransferKv(
        self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[decode_pb2.TransferKvResponse]:
        messages = _messages(request_iterator)
        try:
            first = await anext(messages, None)
        except WireError as exc:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if not isinstance(first, decode_pb2.TransferKvRequest) or first.WhichOneof("msg") != "open":
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "a transfer must start with an open message")
        opened = first.open
        fingerprint = self.engine.engine.spec.fingerprint()
        if opened.fingerprint != fingerprint:
            await abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"model fingerprint mismatch: sender {opened.fingerprint}, receiver {fingerprint}",
            )
        pending = await self._wait_registered(opened.request_id)
        if pending is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"no Decode registration for {opened.request_id!r}")
        rid, req = opened.request_id, pending.request
        now = pending.renewed_s = time.monotonic()
        pending.streams += 1
        salt = tenant_salt(req.tenant_id)
        offer = None
        try:
            start = await self.engine.call(lambda e: e.match_transfer_prefix(list(req.token_ids), salt).num_tokens)
            offer = self.data.offer() if self.data is not None and opened.data_plane else None
            yield decode_pb2.TransferKvResponse(
                accept=decode_pb2.TransferAccept(
                    start_tokens=start,
                    credit_bytes=self.settings.credit_window_bytes,
                    data_port=offer.port if offer else 0,
                    data_token=offer.token if offer else b"",
                )
            )
            if opened.stream_index == 0:
                remaining = context.time_remaining()
                ingest = self._ingest(messages, pending, start, salt, None if remaining is None else now + remaining)
            else:
                ingest = self._ingest_extra(messages, pending)
            if offer is not None:  # chunks come on the data connection, the rest on this stream
                ingest = merge(ingest, self._ingest_data(offer, pending))
            async for msg in ingest:
                yield msg
        except (WireError, InvalidRequest, DataPlaneError) as exc:
            metrics.KV_TRANSFERS_MISSING.inc()  # the state was expected and did not arrive complete
            trace.get_current_span().add_event("kv.missing", {"error": str(exc)})
            await self.engine.call(lambda e: e.abort(rid))
            await abort(context, _transfer_status(exc), f"transfer of {rid}: {exc}")
        except (asyncio.CancelledError, GeneratorExit):
            self._drop_import(rid)  # the sender went away mid-transfer
            raise
        finally:
            pending.streams -= 1
            pending.renewed_s = time.monotonic()
            if offer is not None and self.data is not None:
                self.data.withdraw(offer)

    async def _ingest(
        self, requests: AsyncIterator[Message], pending: Pending, start: int, salt: bytes, deadline: float | None
    ) -> AsyncIterator[decode_pb2.TransferKvResponse]:
        rid = pending.request.request_id
        async for msg in requests:
            if isinstance(msg, memoryview):
                yield await self._apply(pending, msg)
                continue
            kind = msg.WhichOneof("msg")
            if kind == "manifest":
                manifest = KvManifest.decode(msg.manifest)
                if manifest.request_id != rid or manifest.start_tokens != start:
                    raise WireError(
                        f"manifest for {manifest.request_id}@{manifest.start_tokens}, expected {rid}@{start}"
                    )
                await self._begin_import(manifest, pending, salt, deadline)
                pending.importing.set()
                pending.renewed_s = time.monotonic()
            elif kind == "chunk":
                yield await self._apply(pending, msg.chunk)
            elif kind == "commit":
                token = msg.commit.first_token_id
                ev = await self.engine.call(lambda e: e.finish_import(rid, token))  # noqa: B023
                pending.committed = True
                pending.events.put_nowait(ev)
                yield decode_pb2.TransferKvResponse(done=decode_pb2.TransferDone(kv_bytes=pending.kv_bytes))
                return
            else:
                raise WireError(f"unexpected {kind} message in transfer")
        raise WireError("sender closed the transfer before commit")

    async def _begin_import(
        self, manifest: KvManifest, pending: Pending, salt: bytes, transfer_deadline: float | None
    ) -> None:
        """Reserve the imported sequence's blocks and slot. While the engine is full the transfer waits for
        running sequences to finish, oldest transfer first: the sender holds its state (its stream stays open,
        so no lease runs) instead of prefilling again elsewhere. After `import_wait_s`, or shortly before the
        transfer's own deadline, it gives up with `EngineFull` (RESOURCE_EXHAUSTED)."""
        req = pending.request
        params = sampling_from_pb(req.sampling)
        give_up = time.monotonic() + self.settings.import_wait_s
        if transfer_deadline is not None:
            give_up = min(give_up, transfer_deadline - 1.0)
        start_s, delay_s, waited = time.monotonic(), 0.01, False
        async with self._admitting:
            while True:
                try:
                    await self.engine.call(lambda e: e.begin_import(manifest, list(req.token_ids), params, salt))
                    break
                except EngineFull:
                    if time.monotonic() + delay_s > give_up:
                        raise
                await asyncio.sleep(delay_s)
                delay_s, waited = min(2 * delay_s, 0.2), True
        if waited:
            trace.get_current_span().add_event("decode.import_wait", {"seconds": time.monotonic() - start_s})

    async def _apply(self, pending: Pending, data: bytes | memoryview) -> decode_pb2.TransferKvResponse:
        """Apply one chunk on the engine thread, then return its bytes as credit."""
        await self.engine.call(lambda e: e.apply_chunk(KvChunk.decode(data)))
        pending.kv_bytes += len(data)
        pending.renewed_s = time.monotonic()
        return decode_pb2.TransferKvResponse(credit_bytes=len(data))

    def _drop_import(self, rid: str) -> None:
        """Free the blocks of a state that will not be completed (one already committed decodes on); a state
        cut off half way counts as KV expected but not received."""
        span = trace.get_current_span()

        async def drop() -> None:
            with contextlib.suppress(EngineStopped):
                if await self.engine.call(lambda e: rid in e.importing and e.abort(rid)):
                    metrics.KV_TRANSFERS_MISSING.inc()
                    if span.is_recording():
                        span.add_event("kv.missing", {"error": "the sender went away mid-transfer"})

        task = asyncio.ensure_future(drop())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _imported(self, pending: Pending) -> None:
        """Wait for stream 0's manifest to be admitted (`_begin_import`): chunks of the other streams and of
        data connections may come first."""
        try:
            limit_s = self.settings.register_timeout_s + self.settings.import_wait_s
            await asyncio.wait_for(pending.importing.wait(), limit_s)
        except TimeoutError as exc:
            raise WireError("the transfer's primary stream never sent its manifest") from exc

    async def _ingest_data(self, offer: DataOffer, pending: Pending) -> AsyncIterator[decode_pb2.TransferKvResponse]:
        """A stream's chunks from its data connection (read into buffers it owns), applied and credited
        exactly like in-band chunks; ends at the connection's end marker."""
        connection = await offer.connection(self.settings.register_timeout_s)
        await self._imported(pending)
        async for frame in connection.frames():
            yield await self._apply(pending, frame)

    async def _ingest_extra(
        self, requests: AsyncIterator[Message], pending: Pending
    ) -> AsyncIterator[decode_pb2.TransferKvResponse]:
        """A parallel stream of a transfer: chunks only, applied once stream 0's manifest is in."""
        await self._imported(pending)
        async for msg in requests:
            if isinstance(msg, memoryview):
                yield await self._apply(pending, msg)
            elif msg.WhichOneof("msg") == "chunk":
                yield await self._apply(pending, msg.chunk)
            else:
                raise WireError("a parallel transfer stream carries only chunks")

    async def MatchPrefix(
        self, request: decode_pb2.MatchPrefixRequest, context: grpc.aio.ServicerContext
    ) -> decode_pb2.MatchPrefixResponse:
        salt = tenant_salt(request.tenant_id)
        hit = await self.engine.call(lambda e: e.match_transfer_prefix(list(request.token_ids), salt))
        return decode_pb2.MatchPrefixResponse(cached_tokens=hit.num_tokens)

    async def GetDecodeLoad(
        self, request: decode_pb2.GetDecodeLoadRequest, context: grpc.aio.ServicerContext
    ) -> decode_pb2.GetDecodeLoadResponse:
        metrics.ACTIVE_SEQUENCES.labels("decode").set(len(self.pending))
        metrics.KV_BLOCKS_FREE.labels("decode").set(self.engine.engine.cache.blocks.num_free)
        samples = [decode_pb2.DecodeStepSample(batch=b, seconds=s) for b, s in list(self.engine.decode_steps)[-64:]]
        return decode_pb2.GetDecodeLoadResponse(
            active=len(self.pending),
            free_blocks=self.engine.engine.cache.blocks.num_free,
            samples=samples,
            max_seqs=self.engine.engine.config.max_seqs,
        )


Message = memoryview | decode_pb2.TransferKvRequest


def _transfer_status(exc: Exception) -> grpc.StatusCode:
    """A broken data connection is the path's fault, a full engine a passing overload, anything else the
    sender's (a malformed or inconsistent transfer)."""
    if isinstance(exc, DataPlaneError):
        return grpc.StatusCode.UNAVAILABLE
    if isinstance(exc, EngineFull):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    return grpc.StatusCode.INVALID_ARGUMENT


async def _messages(raw: AsyncIterator[bytes]) -> AsyncIterator[Message]:
    """Raw TransferKv messages: chunk frames as zero-copy views, the rest parsed."""
    async for data in raw:
        try:
            yield parse_request(data)
        except DecodeError as exc:
            raise WireError(f"malformed transfer message: {exc}") from exc


async def _wait_for(cond: asyncio.Condition, predicate: Callable[[], bool], timeout_s: float) -> bool:
    try:
        await asyncio.wait_for(cond.wait_for(predicate), timeout_s)
    except TimeoutError:
        return False
    return True


async def build_server(
    settings: DecodeSettings, engine: Engine | None = None
) -> tuple[RunningServer, Callable[[], Awaitable[None]]]:
    """Start a decode worker and its KV data plane (`kv_data_port`); returns the server and a cleanup
    coroutine (closes the data plane, stops the engine)."""
    runner = AsyncEngine(engine or build_engine(settings), "decode-engine", settings.threads)
    runner.start()
    tls = service_tls(settings)
    data = await DataListener.start(
        settings.host,
        settings.kv_data_port,
        ssl_context=tls.server_ssl_context() if tls else None,  # the data plane follows the gRPC port's TLS
        max_buffered_bytes=settings.credit_window_bytes,
    )
    servicer = DecodeServicer(runner, settings, data)
    servicer.start_leases()
    running = await start_server(
        settings.host,
        settings.port,
        [lambda s: add_decode_service(servicer, s)],
        [decode_pb2.DESCRIPTOR.services_by_name["DecodeService"].full_name],
        tls=tls,
    )
    running.servicer = servicer

    async def cleanup() -> None:
        await servicer.stop_leases()
        await data.close()
        await runner.stop()

    return running, cleanup
