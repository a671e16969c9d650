"""The sending side of a KV transfer (a prefill worker streaming state to a decode worker).

Protocol on `DecodeService.TransferKv` bidirectional streams:
  stream 0:  -> open(request id, epoch, fingerprint, 0, n)  <- accept(start_tokens, initial credit)
             -> manifest -> chunk ...                        <- credit grants as chunks are applied
             -> commit(first token)                          <- done(bytes received)
  stream k>0 (optional, to fill a long, fat link with several TCP flows):
             -> open(..., k, n)                              <- accept(start_tokens, initial credit)
             -> chunk ...                                    <- credit grants
The receiver says which prefix it already holds (`start_tokens`) before anything is computed, so
only what it lacks is produced and sent. Each stream has its own credit window; a chunk goes to the
stream with the most free credit. Commit is sent only once every chunk on every stream has been
credited back, i.e. applied by the receiver.

With a `DataPlaneTarget` each open asks for the receiver's data plane (`prfaas/transfer/dataplane.py`):
a stream whose accept offers a data port carries its chunks on its own TCP connection to that port
instead of on the stream; open, manifest, credits and commit stay on the stream. A receiver that offers
no port gets the chunks in-band.
"""

from __future__ import annotations

import asyncio
import inspect
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from prfaas.kv.wire import KvManifest
from prfaas.transfer.dataplane import DataConnection, DataPlaneError
from prfaas.transfer.flow import CreditWindow
from prfaas.transfer.framing import METHOD, parse_request
from prfaas.v1 import decode_pb2


class TransferError(RuntimeError):
    """The receiver refused or broke off the transfer; `code` is the receiver's status when it gave one."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class PreparedExport:
    """What the prefill side hands the sender once it knows the receiver's prefix."""

    manifest: KvManifest
    chunks: asyncio.Queue[bytes]  # chunk frames (`framing.frame_chunk`), built off the event loop
    first_token: Awaitable[int]


@dataclass(frozen=True, slots=True)
class DataPlaneTarget:
    """Ask for the receiver's data plane: `host` is the receiver's (its port comes in the accept)."""

    host: str
    ssl_context: ssl.SSLContext | None = None


@dataclass(frozen=True, slots=True)
class TransferStats:
    kv_bytes: int
    num_chunks: int
    num_streams: int
    receiver_cached_tokens: int
    transfer_s: float
    stalled_s: float  # summed over streams: time spent waiting for credit
    first_token_id: int
    transport: str = "grpc"  # "tcp": the chunks went on data connections, "grpc": in-band


class _Outbox:
    """A stream's outgoing messages, handed to grpc as the call's request iterator. grpc's own `write()`
    proxies through a task that stays blocked when the receiver ends the call first; this iterator ends
    when closed, so a failed transfer leaves no task behind."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=1)
        self._ended: asyncio.Future[Any] | None = None

    async def messages(self) -> AsyncIterator[bytes]:
        while (message := await self._queue.get()) is not None:
            yield message

    async def put(self, message: bytes | None, call: Any) -> bool:
        """Queue `message` (None: no more); False when the call ended before it could be queued."""
        if call.done():
            return False
        if not self._queue.full():
            self._queue.put_nowait(message)
            return True
        if self._ended is None:
            self._ended = asyncio.ensure_future(call.code())
        put = asyncio.ensure_future(self._queue.put(message))
        await asyncio.wait([put, self._ended], return_when=asyncio.FIRST_COMPLETED)
        if not put.done():
            put.cancel()
            return False
        return True

    def close(self) -> None:
        """End the iterator now, dropping what was not sent (the call is over or being cancelled)."""
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(None)
        if self._ended is not None:
            self._ended.cancel()


class _Stream:
    """One bidirectional stream with its credit window, its credit reader and, on the data plane, its
    data connection."""

    def __init__(self, channel: grpc.aio.Channel, timeout_s: float) -> None:
        self.outbox = _Outbox()
        self.call = transfer_call(channel, timeout_s, self.outbox.messages())
        self.window = CreditWindow()
        self.done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.reader: asyncio.Task[None] | None = None
        self.data: DataConnection | None = None
        self.sent = 0

    async def open(self, opened: decode_pb2.TransferOpen) -> decode_pb2.TransferAccept:
        await self.write(decode_pb2.TransferKvRequest(open=opened).SerializeToString())
        accept = (await _read(self.call)).accept
        await self.window.grant(accept.credit_bytes)
        self.reader = asyncio.create_task(self._read_credits())
        return accept

    async def connect(self, accept: decode_pb2.TransferAccept, target: DataPlaneTarget, timeout_s: float) -> None:
        self.data = await DataConnection.open(
            target.host, accept.data_port, accept.data_token, timeout_s, target.ssl_context
        )

    async def send(self, frame: bytes) -> None:
        """Write one chunk frame as is (or its chunk bytes on the data connection); credit is counted in
        chunk bytes, as the receiver returns it."""
        chunk = parse_request(frame)
        assert isinstance(chunk, memoryview)
        await self.window.acquire(len(chunk))
        if self.data is None:
            await self.write(frame)
        else:
            try:
                await self.data.send(chunk)
            except DataPlaneError as exc:
                raise self.window.error or exc from None  # the receiver's reason, when it gave one
        self.sent += len(chunk)

    async def finish(self, primary: bool) -> None:
        """No more chunks on this stream."""
        if self.data is not None:
            await self.data.finish()
        if not primary:
            await self.done_writing()

    async def done_writing(self) -> None:
        await self.write(None)

    async def write(self, message: bytes | None) -> None:
        """Send `message` on the stream (None: half-close); when the call has already ended (receiver
        unreachable, or it refused the transfer), raise why."""
        if not await self.outbox.put(message, self.call):
            code, details = await self.call.code(), await self.call.details()
            ended = TransferError(f"receiver ended the transfer: {code.name} {details}", code)
            raise self.window.error or ended

    def close(self) -> None:
        self.outbox.close()
        if self.reader is not None:
            self.reader.cancel()
        if self.done.done() and not self.done.cancelled():
            self.done.exception()  # seen: the failure is reported through the window or the primary's done
        if self.data is not None:
            self.data.close()

    async def _read_credits(self) -> None:
        try:
            while True:
                msg = await self.call.read()
                if msg is grpc.aio.EOF:
                    code = await self.call.code()
                    if code == grpc.StatusCode.OK and self.window.in_flight == 0:  # a parallel stream's end
                        if not self.done.done():
                            self.done.set_result(0)
                        return
                    details = await self.call.details()
                    raise TransferError(f"receiver closed the transfer: {code.name if code else 'EOF'} {details}", code)
                assert isinstance(msg, decode_pb2.TransferKvResponse)
                kind = msg.WhichOneof("msg")
                if kind == "credit_bytes":
                    await self.window.grant(msg.credit_bytes)
                elif kind == "done":
                    self.done.set_result(msg.done.kv_bytes)
                    return
        except (TransferError, grpc.aio.AioRpcError) as exc:
            error = TransferError(str(exc), exc.code() if isinstance(exc, grpc.aio.AioRpcError) else exc.code)
            await self.window.fail(error)
            if self.data is not None:
                self.data.abort()  # a sender blocked on the data connection wakes up
            if not self.done.done():
                self.done.set_exception(error)


def transfer_call(channel: grpc.aio.Channel, timeout_s: float, requests: AsyncIterator[bytes] | None = None) -> Any:
    """A `TransferKv` stream that writes pre-serialized messages (chunk frames go out untouched): the
    messages of `requests`, or those given to the call's `write()` when it is None."""
    method = channel.stream_stream(
        METHOD, request_serializer=None, response_deserializer=decode_pb2.TransferKvResponse.FromString
    )
    return method(requests, timeout=timeout_s)


async def send_state(
    channel: grpc.aio.Channel,
    request_id: str,
    epoch: int,
    fingerprint: str,
    prepare: Callable[[int], Awaitable[PreparedExport]],
    timeout_s: float,
    num_streams: int = 1,
    data_plane: DataPlaneTarget | None = None,
) -> TransferStats:
    """Send one request's state; chunks go on data connections when `data_plane` is given and the
    receiver offers one, in-band otherwise."""
    t0 = time.perf_counter()
    streams = [_Stream(channel, timeout_s) for _ in range(max(1, num_streams))]
    export: PreparedExport | None = None
    try:
        accepts = [
            await s.open(
                decode_pb2.TransferOpen(
                    request_id=request_id,
                    epoch=epoch,
                    fingerprint=fingerprint,
                    stream_index=i,
                    num_streams=len(streams),
                    data_plane=data_plane is not None,
                )
            )
            for i, s in enumerate(streams)
        ]
        export = await _prepare_and_connect(streams, accepts, prepare, data_plane, timeout_s)
        primary = streams[0]
        await primary.write(decode_pb2.TransferKvRequest(manifest=export.manifest.encode()).SerializeToString())
        await _send_chunks(streams, export)
        for i, s in enumerate(streams):
            await s.finish(primary=i == 0)
        await asyncio.gather(*(s.window.drained() for s in streams))
        first = await export.first_token
        commit = decode_pb2.TransferKvRequest(commit=decode_pb2.TransferCommit(first_token_id=first))
        await primary.write(commit.SerializeToString())
        await primary.done_writing()
        received = await primary.done
    except BaseException as exc:
        for s in streams:
            s.call.cancel()
        if export is not None and inspect.iscoroutine(export.first_token):
            export.first_token.close()  # never awaited: the transfer failed before commit
        if isinstance(exc, DataPlaneError):
            raise TransferError(str(exc)) from exc
        raise
    finally:
        for s in streams:
            s.close()
    sent = sum(s.sent for s in streams)
    if received != sent:
        raise TransferError(f"receiver acknowledged {received} bytes, {sent} were sent")
    return TransferStats(
        sent,
        export.manifest.num_chunks,
        len(streams),
        accepts[0].start_tokens,
        time.perf_counter() - t0,
        sum(s.window.stalled_s for s in streams),
        first,
        "tcp" if any(s.data is not None for s in streams) else "grpc",
    )


async def _prepare_and_connect(
    streams: list[_Stream],
    accepts: list[decode_pb2.TransferAccept],
    prepare: Callable[[int], Awaitable[PreparedExport]],
    data_plane: DataPlaneTarget | None,
    timeout_s: float,
) -> PreparedExport:
    """The receiver's data connections open while the prefill side admits the request."""
    connecting = [
        asyncio.create_task(s.connect(a, data_plane, timeout_s))
        for s, a in zip(streams, accepts, strict=True)
        if data_plane is not None and a.data_port
    ]
    try:
        export = await prepare(accepts[0].start_tokens)
        await asyncio.gather(*connecting)
    finally:
        for task in connecting:
            task.cancel()
    return export


async def _send_chunks(streams: list[_Stream], export: PreparedExport) -> None:
    """One writer per stream pulls the next chunk when its previous write went out, so a stream
    waiting for credit takes no more work and the others carry on."""
    ready: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=len(streams))

    async def pump() -> None:
        for _ in range(export.manifest.num_chunks):
            await ready.put(await export.chunks.get())
        for _ in streams:
            await ready.put(None)

    async def writer(stream: _Stream) -> None:
        while (data := await ready.get()) is not None:
            await stream.send(data)

    tasks = [asyncio.create_task(pump()), *(asyncio.create_task(writer(s)) for s in streams)]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()


async def _read(call: grpc.aio.StreamStreamCall) -> decode_pb2.TransferKvResponse:
    msg = await call.read()
    if msg is grpc.aio.EOF:
        code = await call.code()
        details = await call.details()
        raise TransferError(f"receiver closed the transfer: {code.name if code else 'EOF'} {details}", code)
    assert isinstance(msg, decode_pb2.TransferKvResponse)
    return msg
