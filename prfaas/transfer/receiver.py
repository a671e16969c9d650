"""The receiving end of a KV transfer (a decode or PD worker), the mirror of `sender.py`.

A request is first *registered* (the decode worker's `Decode` call: prompt, sampling, a token queue);
its state then arrives on one or more `TransferKv` streams (protocol in `sender.py`):
  stream 0:  <- open            -> accept(prefix held here, credit, data port + token)
             <- manifest        (blocks and a slot are reserved: `_begin_import`, waiting while full)
             <- chunk ...       -> credit per applied chunk
             <- commit          -> done (the sequence joins the decode batch)
  stream k>0 carries chunks only, applied once stream 0's manifest is in; with the data plane the
  chunks of a stream arrive on its own TCP connection and the stream carries the rest.
Everything that goes wrong comes out as `TransferRefused` with the status the sender should see; the
engine never keeps blocks for a state that will not be completed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol

import grpc
from google.protobuf.message import DecodeError
from opentelemetry import trace

from prfaas.engine.async_engine import AsyncEngine, EngineStopped
from prfaas.engine.engine import EngineFull
from prfaas.engine.sequence import TokenEvent
from prfaas.engine.validation import InvalidRequest
from prfaas.kv.wire import KvChunk, KvManifest, WireError
from prfaas.service.convert import sampling_from_pb, tenant_salt
from prfaas.telemetry import metrics
from prfaas.transfer.dataplane import DataListener, DataOffer, DataPlaneError
from prfaas.transfer.framing import parse_request
from prfaas.transfer.merge import merge
from prfaas.v1 import decode_pb2

LEASE_EXPIRED = "kv_lease_expired"  # finish reason of the event that ends a registration whose lease ran out
Message = memoryview | decode_pb2.TransferKvRequest
Responses = AsyncIterator[decode_pb2.TransferKvResponse]


class ReceiverSettings(Protocol):
    """The receiver's knobs (a decode worker's settings have them)."""

    @property
    def credit_window_bytes(self) -> int: ...
    @property
    def register_timeout_s(self) -> float: ...
    @property
    def kv_lease_s(self) -> float: ...
    @property
    def import_wait_s(self) -> float: ...
    @property
    def max_queued_requests(self) -> int: ...


class TransferRefused(Exception):
    """A registration or transfer refused or broken off; `code` is the status its caller gets."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(eq=False, slots=True)
class Pending:
    """A registered request waiting for (or receiving) its state."""

    request: decode_pb2.DecodeRequest
    events: asyncio.Queue[TokenEvent]
    importing: asyncio.Event = field(default_factory=asyncio.Event)  # set once the manifest is accepted
    kv_bytes: int = 0
    renewed_s: float = field(default_factory=time.monotonic)  # last sign of life of its transfer (`expired`)
    committed: bool = False  # the whole state arrived: it decodes, no lease any more
    streams: int = 0  # transfer streams open for it: the sender is alive, the lease does not run
    lost: str | None = None  # why its state will never arrive (the lease expired)


class KvReceiver:
    def __init__(self, engine: AsyncEngine, settings: ReceiverSettings, data: DataListener | None = None) -> None:
        self.engine = engine
        self.settings = settings
        self.data = data  # the KV data plane; without it every transfer carries its chunks in-band
        self.pending: dict[str, Pending] = {}
        self._registered = asyncio.Condition()
        self._admitting = asyncio.Lock()  # transfers waiting for room in the engine, first come first served
        self._background: set[asyncio.Future[None]] = set()
        self._reaper: asyncio.Task[None] | None = None

    # -- registrations and their leases ------------------------------------------------------------------
    async def register(self, request: decode_pb2.DecodeRequest) -> Pending:
        rid = request.request_id
        if not rid or rid in self.pending:
            raise TransferRefused(grpc.StatusCode.INVALID_ARGUMENT, f"request id {rid!r} is empty or already in use")
        if len(self.pending) >= self.settings.max_queued_requests:
            raise TransferRefused(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"decode worker has {len(self.pending)} requests registered (max_queued_requests)",
            )
        pending = Pending(request, self.engine.open_stream(rid))
        async with self._registered:
            self.pending[rid] = pending
            self._registered.notify_all()
        return pending

    def unregister(self, request_id: str) -> None:
        self.pending.pop(request_id, None)

    def start_leases(self) -> None:
        self._reaper = asyncio.create_task(self._reap_leases())

    async def stop_leases(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper

    def expired(self, now_s: float) -> list[Pending]:
        """KV lease rule: a registered request whose state is not complete holds a lease of `kv_lease_s`.
        It does not run while a transfer stream for the request is open (the sender is alive, perhaps queued
        behind other prefills; a dead sender breaks the stream, a cut-off one hits its transfer deadline) and
        is renewed by every sign of the transfer (registration, open, manifest, each chunk, a stream's end).
        A lease that runs out means no sender came or it is gone: the request's blocks and slot are freed and
        its registration ends with `LEASE_EXPIRED`, so neither memory nor a caller waits forever."""
        lease_s = self.settings.kv_lease_s
        live = [p for p in self.pending.values() if not p.committed and p.lost is None and not p.streams]
        return [p for p in live if now_s - p.renewed_s > lease_s]

    async def _reap_leases(self) -> None:
        while True:
            await asyncio.sleep(self.settings.kv_lease_s / 4)
            for pending in self.expired(time.monotonic()):
                rid = pending.request.request_id
                lease_s = self.settings.kv_lease_s
                pending.lost = f"KV state of {rid} expected but not received within the {lease_s:g}s lease"
                metrics.KV_TRANSFERS_MISSING.inc()
                with contextlib.suppress(EngineStopped):
                    await self.engine.call(lambda e, rid=rid: e.abort(rid))  # type: ignore[misc]
                pending.events.put_nowait(TokenEvent(rid, 0, 0, LEASE_EXPIRED))

    # -- one transfer stream ------------------------------------------------------------------------------
    async def receive(
        self, raw: AsyncIterator[bytes], time_remaining: Callable[[], float | None]
    ) -> AsyncGenerator[decode_pb2.TransferKvResponse, None]:
        """Serve one `TransferKv` stream: its raw request messages in, its responses out."""
        messages = _messages(raw)
        pending, opened = await self._open(messages)
        rid, req = opened.request_id, pending.request
        now = pending.renewed_s = time.monotonic()
        pending.streams += 1
        salt = tenant_salt(req.tenant_id)
        offer = None
        try:
            start = await self.engine.call(lambda e: e.match_transfer_prefix(list(req.token_ids), salt).num_tokens)
            offer = self.data.offer() if self.data is not None and opened.data_plane else None
            yield _accept(start, self.settings.credit_window_bytes, offer)
            if opened.stream_index == 0:
                remaining = time_remaining()
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
            raise TransferRefused(_transfer_status(exc), f"transfer of {rid}: {exc}") from exc
        except (asyncio.CancelledError, GeneratorExit):
            self._drop_import(rid)  # the sender went away mid-transfer
            raise
        finally:
            pending.streams -= 1
            pending.renewed_s = time.monotonic()
            if offer is not None and self.data is not None:
                self.data.withdraw(offer)

    async def _open(self, messages: AsyncIterator[Message]) -> tuple[Pending, decode_pb2.TransferOpen]:
        """The stream's open message: same model layout, and a registration for its request."""
        try:
            first = await anext(messages, None)
        except WireError as exc:
            raise TransferRefused(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc
        if not isinstance(first, decode_pb2.TransferKvRequest) or first.WhichOneof("msg") != "open":
            raise TransferRefused(grpc.StatusCode.INVALID_ARGUMENT, "a transfer must start with an open message")
        opened, fingerprint = first.open, self.engine.info.fingerprint
        if opened.fingerprint != fingerprint:
            raise TransferRefused(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"model fingerprint mismatch: sender {opened.fingerprint}, receiver {fingerprint}",
            )
        pending = await self._wait_registered(opened.request_id)
        if pending is None:
            raise TransferRefused(grpc.StatusCode.NOT_FOUND, f"no Decode registration for {opened.request_id!r}")
        return pending, opened

    async def _wait_registered(self, rid: str) -> Pending | None:
        async with self._registered:
            try:
                await asyncio.wait_for(
                    self._registered.wait_for(lambda: rid in self.pending), self.settings.register_timeout_s
                )
            except TimeoutError:
                return None
        return self.pending.get(rid)

    async def _ingest(
        self, requests: AsyncIterator[Message], pending: Pending, start: int, salt: bytes, deadline: float | None
    ) -> Responses:
        """Stream 0: the manifest (checked against the accept), chunks, then the commit."""
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
                yield await self._commit(pending, msg.commit.first_token_id)
                return
            else:
                raise WireError(f"unexpected {kind} message in transfer")
        raise WireError("sender closed the transfer before commit")

    async def _commit(self, pending: Pending, first_token_id: int) -> decode_pb2.TransferKvResponse:
        rid = pending.request.request_id
        await self.engine.finish_import(rid, first_token_id)
        pending.committed = True
        return decode_pb2.TransferKvResponse(done=decode_pb2.TransferDone(kv_bytes=pending.kv_bytes))

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

    async def _ingest_data(self, offer: DataOffer, pending: Pending) -> Responses:
        """A stream's chunks from its data connection (read into buffers it owns), applied and credited
        exactly like in-band chunks; ends at the connection's end marker."""
        connection = await offer.connection(self.settings.register_timeout_s)
        await self._imported(pending)
        async for frame in connection.frames():
            yield await self._apply(pending, frame)

    async def _ingest_extra(self, requests: AsyncIterator[Message], pending: Pending) -> Responses:
        """A parallel stream of a transfer: chunks only, applied once stream 0's manifest is in."""
        await self._imported(pending)
        async for msg in requests:
            if isinstance(msg, memoryview):
                yield await self._apply(pending, msg)
            elif msg.WhichOneof("msg") == "chunk":
                yield await self._apply(pending, msg.chunk)
            else:
                raise WireError("a parallel transfer stream carries only chunks")


def _accept(start_tokens: int, credit_bytes: int, offer: DataOffer | None) -> decode_pb2.TransferKvResponse:
    return decode_pb2.TransferKvResponse(
        accept=decode_pb2.TransferAccept(
            start_tokens=start_tokens,
            credit_bytes=credit_bytes,
            data_port=offer.port if offer else 0,
            data_token=offer.token if offer else b"",
        )
    )


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
