"""The sending side of a KV transfer (a prefill worker streaming state to a decode worker).

Protocol on one `DecodeService.TransferKv` bidirectional stream:
  -> open(request id, epoch, fingerprint)      <- accept(start_tokens, initial credit)
  -> manifest -> chunk ... (each within credit) <- credit grants as chunks are applied
  -> commit(first token)                        <- done(bytes received)
The receiver says which prefix it already holds (`start_tokens`) before anything is computed, so
only what it lacks is produced and sent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc

from prfaas.kv.wire import KvChunk, KvManifest
from prfaas.transfer.flow import CreditWindow
from prfaas.v1 import decode_pb2, decode_pb2_grpc


class TransferError(RuntimeError):
    """The receiver refused or broke off the transfer."""


@dataclass(frozen=True, slots=True)
class PreparedExport:
    """What the prefill side hands the sender once it knows the receiver's prefix."""

    manifest: KvManifest
    chunks: asyncio.Queue[KvChunk]
    first_token: Awaitable[int]


@dataclass(frozen=True, slots=True)
class TransferStats:
    kv_bytes: int
    num_chunks: int
    receiver_cached_tokens: int
    transfer_s: float
    stalled_s: float
    first_token_id: int


async def send_state(
    stub: decode_pb2_grpc.DecodeServiceStub,
    request_id: str,
    epoch: int,
    fingerprint: str,
    prepare: Callable[[int], Awaitable[PreparedExport]],
    timeout_s: float,
) -> TransferStats:
    t0 = time.perf_counter()
    call = stub.TransferKv(timeout=timeout_s)
    await call.write(
        decode_pb2.TransferKvRequest(
            open=decode_pb2.TransferOpen(request_id=request_id, epoch=epoch, fingerprint=fingerprint)
        )
    )
    accept = (await _read(call)).accept
    window = CreditWindow()
    await window.grant(accept.credit_bytes)
    done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    reader = asyncio.create_task(_read_credits(call, window, done))
    try:
        export = await prepare(accept.start_tokens)
        await call.write(decode_pb2.TransferKvRequest(manifest=export.manifest.encode()))
        sent = await _send_chunks(call, window, export)
        first = await export.first_token
        await call.write(decode_pb2.TransferKvRequest(commit=decode_pb2.TransferCommit(first_token_id=first)))
        await call.done_writing()
        received = await done
    except BaseException:
        call.cancel()
        raise
    finally:
        reader.cancel()
    if received != sent:
        raise TransferError(f"receiver acknowledged {received} bytes, {sent} were sent")
    return TransferStats(
        sent,
        export.manifest.num_chunks,
        accept.start_tokens,
        time.perf_counter() - t0,
        window.stalled_s,
        first,
    )


async def _send_chunks(call: grpc.aio.StreamStreamCall, window: CreditWindow, export: PreparedExport) -> int:
    sent = 0
    for _ in range(export.manifest.num_chunks):
        data = (await export.chunks.get()).to_bytes()
        await window.acquire(len(data))
        await call.write(decode_pb2.TransferKvRequest(chunk=data))
        sent += len(data)
    return sent


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
            msg = await _read(call)
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
