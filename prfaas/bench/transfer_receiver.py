"""The receiving side of the transfer benchmark: `DecodeService.TransferKv` without an engine.

It accepts with a credit window (and, when asked, a data-plane offer), decodes every chunk off the event
loop (which verifies its CRC32, as the real receiver does on its engine thread), grants the chunk's bytes
back as credit and acknowledges the total on commit; in-band chunks and data-connection frames alike.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from prfaas.kv.wire import KvChunk, KvManifest, WireError
from prfaas.service.status import abort
from prfaas.transfer.dataplane import DataListener, DataOffer, DataPlaneError
from prfaas.transfer.framing import parse_request
from prfaas.transfer.merge import merge
from prfaas.v1 import decode_pb2, decode_pb2_grpc

Message = memoryview | decode_pb2.TransferKvRequest


class BenchReceiver(decode_pb2_grpc.DecodeServiceServicer):
    """`DecodeService.TransferKv` receiving side, faithful to the protocol, with no engine behind it.

    Stream 0 carries open, manifest, chunks and commit; parallel streams (index > 0) carry only chunks.
    With `data` a stream that asks for the data plane gets its chunks on a data connection instead.
    Bytes are counted per request over all its streams; the sender commits once all are credited back."""

    def __init__(self, window_bytes: int, data: DataListener | None = None) -> None:
        self.window_bytes = window_bytes
        self.data = data
        self.received: dict[str, int] = {}

    async def TransferKv(
        self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[decode_pb2.TransferKvResponse]:
        messages = (parse_request(raw) async for raw in request_iterator)
        first = await anext(messages, None)
        if not isinstance(first, decode_pb2.TransferKvRequest) or first.WhichOneof("msg") != "open":
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "a transfer must start with an open message")
        rid, primary = first.open.request_id, first.open.stream_index == 0
        offer = self.data.offer() if self.data is not None and first.open.data_plane else None
        try:
            yield decode_pb2.TransferKvResponse(
                accept=decode_pb2.TransferAccept(
                    start_tokens=0,
                    credit_bytes=self.window_bytes,
                    data_port=offer.port if offer else 0,
                    data_token=offer.token if offer else b"",
                )
            )
            ingest = self._ingest(messages, rid, primary)
            if offer is not None:
                ingest = merge(ingest, self._ingest_data(offer, rid))
            async for msg in ingest:
                yield msg
        except (WireError, DataPlaneError) as exc:
            self.received.pop(rid, None)
            code = grpc.StatusCode.UNAVAILABLE if isinstance(exc, DataPlaneError) else grpc.StatusCode.INVALID_ARGUMENT
            await abort(context, code, f"transfer of {rid}: {exc}")
        finally:
            if offer is not None and self.data is not None:
                self.data.withdraw(offer)

    async def _ingest(
        self, requests: AsyncIterator[Message], rid: str, primary: bool
    ) -> AsyncIterator[decode_pb2.TransferKvResponse]:
        async for msg in requests:
            if isinstance(msg, memoryview):  # a chunk frame, as a view: no parse copy
                yield await self._apply(rid, msg)
                continue
            kind = msg.WhichOneof("msg")
            if kind == "chunk":
                yield await self._apply(rid, msg.chunk)
            elif not primary:
                raise WireError("a parallel transfer stream carries only chunks")
            elif kind == "manifest":
                KvManifest.decode(msg.manifest)
            elif kind == "commit":
                yield decode_pb2.TransferKvResponse(done=decode_pb2.TransferDone(kv_bytes=self.received.pop(rid, 0)))
                return
            else:
                raise WireError(f"unexpected {kind} message in transfer")
        if primary:
            raise WireError("sender closed the transfer before commit")

    async def _ingest_data(self, offer: DataOffer, rid: str) -> AsyncIterator[decode_pb2.TransferKvResponse]:
        connection = await offer.connection(30.0)
        async for frame in connection.frames():
            yield await self._apply(rid, frame)

    async def _apply(self, rid: str, data: bytes | memoryview) -> decode_pb2.TransferKvResponse:
        await asyncio.to_thread(KvChunk.decode, data)  # off the loop, as the real receiver's engine thread
        self.received[rid] = self.received.get(rid, 0) + len(data)
        return decode_pb2.TransferKvResponse(credit_bytes=len(data))
