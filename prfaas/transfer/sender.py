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
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from prfaas.kv.wire import KvManifest
from prfaas.transfer.flow import CreditWindow
from prfaas.transfer.framing import METHOD, parse_request
from prfaas.v1 import decode_pb2


class TransferError(RuntimeError):
    """The receiver refused or broke off the transfer."""


@dataclass(frozen=True, slots=True)
class PreparedExport:
    """What the prefill side hands the sender once it knows the receiver's prefix."""

    manifest: KvManifest
    chunks: asyncio.Queue[bytes]  # chunk frames (`framing.frame_chunk`), built off the event loop
    first_token: Awaitable[int]


@dataclass(frozen=True, slots=True)
class TransferStats:
    kv_bytes: int
    num_chunks: int
    num_streams: int
    receiver_cached_tokens: int
    transfer_s: float
    stalled_s: float  # summed over streams: time spent waiting for credit
    first_token_id: int


class _Stream:
    """One bidirectional stream with its credit window and credit reader."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self.window = CreditWindow()
        self.done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.reader: asyncio.Task[None] | None = None
        self.sent = 0

    async def open(self, opened: decode_pb2.TransferOpen) -> decode_pb2.TransferAccept:
        await self.call.write(decode_pb2.TransferKvRequest(open=opened).SerializeToString())
        accept = (await _read(self.call)).accept
        await self.window.grant(accept.credit_bytes)
        self.reader = asyncio.create_task(_read_credits(self.call, self.window, self.done))
        return accept

    async def send(self, frame: bytes) -> None:
        """Write one chunk frame as is; credit is counted in chunk bytes, as the receiver returns it."""
        size = len(parse_request(frame))
        await self.window.acquire(size)
        await self.call.write(frame)
        self.sent += size

    def close(self) -> None:
        if self.reader is not None:
            self.reader.cancel()


def transfer_call(channel: grpc.aio.Channel, timeout_s: float) -> Any:
    """A `TransferKv` stream that writes pre-serialized messages (chunk frames go out untouched)."""
    method = channel.stream_stream(
        METHOD, request_serializer=None, response_deserializer=decode_pb2.TransferKvResponse.FromString
    )
    return method(timeout=timeout_s)


async def send_state(
    channel: grpc.aio.Channel,
    request_id: str,
    epoch: int,
    fingerprint: str,
    prepare: Callable[[int], Awaitable[PreparedExport]],
    timeout_s: float,
    num_streams: int = 1,
) -> TransferStats:
    t0 = time.perf_counter()
    streams = [_Stream(transfer_call(channel, timeout_s)) for _ in range(max(1, num_streams))]
    try:
        accepts = [
            await s.open(
                decode_pb2.TransferOpen(
                    request_id=request_id,
                    epoch=epoch,
                    fingerprint=fingerprint,
                    stream_index=i,
                    num_streams=len(streams),
                )
            )
            for i, s in enumerate(streams)
        ]
        export = await prepare(accepts[0].start_tokens)
        primary = streams[0]
        await primary.call.write(decode_pb2.TransferKvRequest(manifest=export.manifest.encode()).SerializeToString())
        await _send_chunks(streams, export)
        for s in streams[1:]:
            await s.call.done_writing()
        await asyncio.gather(*(s.window.drained() for s in streams))
        first = await export.first_token
        commit = decode_pb2.TransferKvRequest(commit=decode_pb2.TransferCommit(first_token_id=first))
        await primary.call.write(commit.SerializeToString())
        await primary.call.done_writing()
        received = await primary.done
    except BaseException:
        for s in streams:
            s.call.cancel()
        raise
    finally:
        for s in streams:
            s.close()
    sent = sum(s.sent for s in streams)
    if received != sent:
        raise TransferError(f"receiver acknowledged {received} bytes, {sent} were sent")
    stalled = sum(s.window.stalled_s for s in streams)
    return TransferStats(
        sent,
        export.manifest.num_chunks,
        len(streams),
        accepts[0].start_tokens,
        time.perf_counter() - t0,
        stalled,
        first,
    )


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

    await asyncio.gather(pump(), *(writer(s) for s in streams))


async def _read(call: grpc.aio.StreamStreamCall) -> decode_pb2.TransferKvResponse:
    msg = await call.read()
    if msg is grpc.aio.EOF:
        code = await call.code()
        raise TransferError(f"receiver closed the transfer: {code.name if code else 'EOF'} {await call.details()}")
    assert isinstance(msg, decode_pb2.TransferKvResponse)
    return msg


async def _read_credits(call: grpc.aio.StreamStreamCall, window: CreditWindow, done: asyncio.Future[int]) -> None:
    try:
        while True:
            msg = await call.read()
            if msg is grpc.aio.EOF:
                code = await call.code()
                if code == grpc.StatusCode.OK and window.in_flight == 0:  # a parallel stream's normal end
                    if not done.done():
                        done.set_result(0)
                    return
                raise TransferError(
                    f"receiver closed the transfer: {code.name if code else 'EOF'} {await call.details()}"
                )
            assert isinstance(msg, decode_pb2.TransferKvResponse)
            kind = msg.WhichOneof("msg")
            if kind == "credit_bytes":
                await window.grant(msg.credit_bytes)
            elif kind == "done":
                done.set_result(msg.done.kv_bytes)
                return
    except (TransferError, grpc.aio.AioRpcError) as exc:
        error = TransferError(str(exc))
        await window.fail(error)
        if not done.done():
            done.set_exception(error)
