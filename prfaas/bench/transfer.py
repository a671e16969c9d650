"""KV transfer benchmark: the real `send_state` over a loopback gRPC `TransferKv` stream against raw
asyncio TCP carrying the same chunk bytes, in the same run.

The gRPC receiver is a double of the decode worker's `TransferKv` without an engine: it accepts with a
credit window, decodes every chunk off the event loop (which verifies its CRC32, as the real receiver
does on its engine thread), grants the chunk's bytes back as credit and acknowledges the total on
commit. The TCP server reads and discards, then acknowledges the byte count, so both timings cover
delivery rather than buffering. Both ends of both paths share this process and its event loop.

Measured on loopback, the gRPC transport itself (raw bytes, identity serializers) keeps up with TCP;
what the gRPC path loses is per-byte Python work on the loop thread: `KvChunk.to_bytes` (CRC32 and two
copies), protobuf wrapping on both ends (three copies out, two in) and the receiver's CRC32.
"""

from __future__ import annotations

import asyncio
import statistics
import struct
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import grpc
import torch

from prfaas.kv.wire import FULL_KV, ChunkKey, KvChunk, KvManifest, WireError
from prfaas.service.grpc_server import CHANNEL_OPTIONS, RunningServer, start_server
from prfaas.service.status import abort
from prfaas.transfer.framing import add_decode_service, frame_chunk, parse_request
from prfaas.transfer.sender import PreparedExport, send_state
from prfaas.v1 import decode_pb2, decode_pb2_grpc

ROW_FLOATS = 256  # one synthetic "token row" of a full-attention layer: 1 KiB of float32
FINGERPRINT = "bench-transfer"
ChannelOptions = Sequence[tuple[str, int | str]]


@dataclass(frozen=True, slots=True)
class TransferBenchResult:
    grpc_gbps: float  # median over repeats, 1e9 bit/s of wire bytes
    tcp_gbps: float
    ratio: float  # grpc_gbps / tcp_gbps
    total_bytes: int  # payload bytes asked for
    chunk_bytes: int
    wire_bytes: int  # encoded chunk bytes each path delivered (payload plus chunk headers)
    num_chunks: int
    num_streams: int  # gRPC streams per transfer
    grpc_gbps_runs: list[float]
    tcp_gbps_runs: list[float]
    grpc_delivered: list[int]  # bytes the gRPC receiver acknowledged, per repeat
    tcp_delivered: list[int]  # bytes the TCP server acknowledged, per repeat


class BenchReceiver(decode_pb2_grpc.DecodeServiceServicer):
    """`DecodeService.TransferKv` receiving side, faithful to the protocol, with no engine behind it.

    Stream 0 carries open, manifest, chunks and commit; parallel streams (index > 0) carry only chunks.
    Bytes are counted per request over all its streams; the sender commits once all are credited back."""

    def __init__(self, window_bytes: int) -> None:
        self.window_bytes = window_bytes
        self.received: dict[str, int] = {}

    async def TransferKv(
        self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[decode_pb2.TransferKvResponse]:
        messages = (parse_request(raw) async for raw in request_iterator)
        first = await anext(messages, None)
        if not isinstance(first, decode_pb2.TransferKvRequest) or first.WhichOneof("msg") != "open":
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "a transfer must start with an open message")
        rid, primary = first.open.request_id, first.open.stream_index == 0
        yield decode_pb2.TransferKvResponse(
            accept=decode_pb2.TransferAccept(start_tokens=0, credit_bytes=self.window_bytes)
        )
        try:
            async for msg in self._ingest(messages, rid, primary):
                yield msg
        except WireError as exc:
            self.received.pop(rid, None)
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"transfer of {rid}: {exc}")

    async def _ingest(
        self, requests: AsyncIterator[memoryview | decode_pb2.TransferKvRequest], rid: str, primary: bool
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

    async def _apply(self, rid: str, data: bytes | memoryview) -> decode_pb2.TransferKvResponse:
        await asyncio.to_thread(KvChunk.decode, data)  # off the loop, as the real receiver's engine thread
        self.received[rid] = self.received.get(rid, 0) + len(data)
        return decode_pb2.TransferKvResponse(credit_bytes=len(data))


def synthetic_chunks(total_bytes: int, chunk_bytes: int, request_id: str = "bench", seed: int = 0) -> list[KvChunk]:
    """Random float32 full-attention chunks whose payloads add up to `total_bytes` (whole 1 KiB rows)."""
    gen = torch.Generator().manual_seed(seed)
    row_bytes = ROW_FLOATS * 4
    rows_total, rows_per = total_bytes // row_bytes, max(1, chunk_bytes // row_bytes)
    chunks = []
    for seq, a in enumerate(range(0, rows_total, rows_per)):
        b = min(a + rows_per, rows_total)
        tensor = torch.rand((b - a, ROW_FLOATS), generator=gen, dtype=torch.float32)
        chunks.append(KvChunk(request_id, 0, seq, ChunkKey(0, FULL_KV, a, b), tensor))
    return chunks


def _manifest(chunks: Sequence[KvChunk], chunk_bytes: int) -> KvManifest:
    rows = chunks[-1].key.row_end
    tokens = chunks[0].key.row_end - chunks[0].key.row_start
    return KvManifest(FINGERPRINT, chunks[0].request_id, 0, 0, rows, chunk_bytes, tokens, len(chunks))


async def _export(chunks: Sequence[KvChunk], frames: Sequence[bytes], chunk_bytes: int) -> PreparedExport:
    """The export as the sender sees it: frames are built beforehand (in a worker they are built on the
    engine thread while the prefill runs), so the timing covers the transport only, as for TCP."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for frame in frames:
        queue.put_nowait(frame)
    first: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    first.set_result(1)
    return PreparedExport(_manifest(chunks, chunk_bytes), queue, first)


async def _start_grpc(window_bytes: int, options: ChannelOptions | None) -> tuple[RunningServer | grpc.aio.Server, int]:
    receiver = BenchReceiver(window_bytes)
    if options is None:
        running = await start_server("127.0.0.1", 0, [lambda s: add_decode_service(receiver, s)], [])
        return running, running.port
    server = grpc.aio.server(options=list(options))
    add_decode_service(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


async def grpc_runs(
    chunks: Sequence[KvChunk],
    chunk_bytes: int,
    window_bytes: int,
    repeats: int,
    num_streams: int = 1,
    options: ChannelOptions | None = None,
) -> list[tuple[int, float]]:
    """(bytes acknowledged, seconds from open to done) for each repeat, plus one untimed warm-up."""
    server, port = await _start_grpc(window_bytes, options)
    chan = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=list(options or CHANNEL_OPTIONS))
    runs = []

    frames = [frame_chunk(c) for c in chunks]

    async def prepare(_: int) -> PreparedExport:
        return await _export(chunks, frames, chunk_bytes)

    try:
        for i in range(repeats + 1):
            stats = await send_state(chan, f"bench-{i}", 0, FINGERPRINT, prepare, 120.0, num_streams)
            runs.append((stats.kv_bytes, stats.transfer_s))
    finally:
        await chan.close()
        await server.stop(0)
    return runs[1:]


async def _discard(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    (expected,) = struct.unpack("<Q", await reader.readexactly(8))
    received = 0
    while received < expected:
        block = await reader.read(1 << 20)
        if not block:
            break
        received += len(block)
    writer.write(struct.pack("<Q", received))
    await writer.drain()
    writer.close()


async def _tcp_once(port: int, blobs: Sequence[bytes]) -> tuple[int, float]:
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(struct.pack("<Q", sum(len(b) for b in blobs)))
    for blob in blobs:
        writer.write(blob)
        await writer.drain()
    (acked,) = struct.unpack("<Q", await reader.readexactly(8))
    elapsed = time.perf_counter() - t0
    writer.close()
    await writer.wait_closed()
    return acked, elapsed


async def tcp_runs(blobs: Sequence[bytes], repeats: int) -> list[tuple[int, float]]:
    """(bytes acknowledged, seconds from connect to acknowledgement) for each repeat, after a warm-up."""
    server = await asyncio.start_server(_discard, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        runs = [await _tcp_once(port, blobs) for _ in range(repeats + 1)]
    finally:
        server.close()
        await server.wait_closed()
    return runs[1:]


def _gbps(runs: Sequence[tuple[int, float]]) -> list[float]:
    return [n * 8 / s / 1e9 for n, s in runs]


async def run_transfer_bench(
    total_bytes: int = 256 << 20,
    chunk_bytes: int = 4 << 20,
    window_bytes: int = 32 << 20,
    repeats: int = 3,
    num_streams: int = 1,
    options: ChannelOptions | None = None,
) -> TransferBenchResult:
    """Throughput of the real gRPC transfer path and of raw TCP on loopback, same chunks, same run.

    `num_streams` is `send_state`'s parallel streams (one channel, each with its own credit window);
    `options` replaces the production channel/server options (`CHANNEL_OPTIONS`) on both ends."""
    chunks = synthetic_chunks(total_bytes, chunk_bytes)
    blobs = [c.to_bytes() for c in chunks]
    g_runs = await grpc_runs(chunks, chunk_bytes, window_bytes, repeats, num_streams, options)
    t_runs = await tcp_runs(blobs, repeats)
    g, t = _gbps(g_runs), _gbps(t_runs)
    grpc_gbps, tcp_gbps = statistics.median(g), statistics.median(t)
    return TransferBenchResult(
        grpc_gbps,
        tcp_gbps,
        grpc_gbps / tcp_gbps,
        total_bytes,
        chunk_bytes,
        sum(len(b) for b in blobs),
        len(chunks),
        num_streams,
        g,
        t,
        [n for n, _ in g_runs],
        [n for n, _ in t_runs],
    )


def format_transfer_table(result: TransferBenchResult) -> str:
    mib = 1 << 20
    rows = [
        (f"gRPC TransferKv x{result.num_streams} stream", result.grpc_gbps, result.grpc_gbps_runs),
        ("raw asyncio TCP", result.tcp_gbps, result.tcp_gbps_runs),
    ]
    head = (
        f"KV transfer, loopback: {result.total_bytes / mib:.0f} MiB in {result.num_chunks} chunks of "
        f"{result.chunk_bytes / mib:g} MiB ({result.wire_bytes} wire bytes)"
    )
    lines = [head, f"{'path':<30} {'Gbit/s':>8}  runs"]
    for name, median, runs in rows:
        lines.append(f"{name:<30} {median:>8.2f}  {', '.join(f'{r:.2f}' for r in runs)}")
    lines.append(f"{'ratio gRPC / TCP':<30} {result.ratio:>8.2f}")
    return "\n".join(lines)
