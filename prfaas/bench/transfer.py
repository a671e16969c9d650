"""KV transfer benchmark: the real `send_state` over loopback, with its production transport (the TCP
data plane) and with every chunk in-band on the gRPC `TransferKv` stream, against raw asyncio TCP
carrying the same chunk bytes, in the same run.

The receiver (`transfer_receiver.BenchReceiver`) is a double of the decode worker's `TransferKv` without
an engine: credit window, data-plane offer, CRC check off the loop, credits back, acknowledgement on
commit. The TCP server reads and discards, then acknowledges the byte count, so every timing covers
delivery rather than buffering. All ends share this process and its event loop; the three paths take
turns in each round, so a noisy neighbour hurts them alike.

In-band gRPC is copy-bound: grpc-python copies each message once on send (bytes -> slice) and once on
receive (slices -> bytes) on top of the kernel's copies, which halves throughput on a memory-bandwidth
bound host. The data plane writes chunk bytes straight to a socket and reads them into buffers the
receiver owns.
"""

from __future__ import annotations

import asyncio
import statistics
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import torch

from prfaas.bench.transfer_receiver import BenchReceiver
from prfaas.kv.wire import FULL_KV, ChunkKey, KvChunk, KvManifest
from prfaas.service.grpc_server import CHANNEL_OPTIONS
from prfaas.transfer.dataplane import DataListener
from prfaas.transfer.framing import add_decode_service, frame_chunk, parse_request
from prfaas.transfer.sender import DataPlaneTarget, PreparedExport, TransferStats, send_state

ROW_FLOATS = 256  # one synthetic "token row" of a full-attention layer: 1 KiB of float32
FINGERPRINT = "bench-transfer"
ChannelOptions = Sequence[tuple[str, int | str]]
Run = tuple[int, float]  # (bytes acknowledged, seconds)


@dataclass(frozen=True, slots=True)
class TransferBenchResult:
    grpc_gbps: float  # send_state as deployed (kv_transport=tcp: gRPC control + TCP data plane); median, 1e9 bit/s
    inband_gbps: float  # send_state with every chunk in-band on the gRPC stream (kv_transport=grpc)
    tcp_gbps: float  # raw asyncio TCP, the same chunk bytes
    ratio: float  # grpc_gbps / tcp_gbps
    inband_ratio: float  # inband_gbps / tcp_gbps
    transport: str  # how grpc_gbps's chunks travelled: "tcp" = on the data plane
    total_bytes: int  # payload bytes asked for
    chunk_bytes: int
    wire_bytes: int  # encoded chunk bytes each path delivered (payload plus chunk headers)
    num_chunks: int
    num_streams: int  # send_state streams per transfer (each with its own data connection)
    grpc_gbps_runs: list[float]
    inband_gbps_runs: list[float]
    tcp_gbps_runs: list[float]
    grpc_delivered: list[int]  # bytes each path's receiver acknowledged, per repeat
    inband_delivered: list[int]
    tcp_delivered: list[int]


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


async def _export(manifest: KvManifest, frames: Sequence[bytes]) -> PreparedExport:
    """The export as the sender sees it: frames are built beforehand (in a worker they are built on the
    engine thread while the prefill runs), so the timing covers the transport only, as for TCP."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for frame in frames:
        queue.put_nowait(frame)
    first: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    first.set_result(1)
    return PreparedExport(manifest, queue, first)


class _Receivers:
    """The gRPC receiver (with its data plane) and the TCP discard server, started once per benchmark."""

    def __init__(self, window_bytes: int, options: ChannelOptions | None) -> None:
        self.window_bytes, self.options = window_bytes, list(options or CHANNEL_OPTIONS)

    async def __aenter__(self) -> _Receivers:
        self.data = await DataListener.start("127.0.0.1", max_buffered_bytes=self.window_bytes)
        self.server = grpc.aio.server(options=self.options)
        add_decode_service(BenchReceiver(self.window_bytes, self.data), self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=self.options)
        self.tcp = await asyncio.start_server(_discard, "127.0.0.1", 0)
        self.tcp_port = self.tcp.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.channel.close()
        await self.server.stop(0)
        await self.data.close()
        self.tcp.close()
        await self.tcp.wait_closed()


async def _send_state_once(
    receivers: _Receivers, request_id: str, export: PreparedExport, num_streams: int, data_plane: bool
) -> TransferStats:
    async def prepare(_: int) -> PreparedExport:
        return export

    target = DataPlaneTarget("127.0.0.1") if data_plane else None
    return await send_state(receivers.channel, request_id, 0, FINGERPRINT, prepare, 120.0, num_streams, target)


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


async def _tcp_once(port: int, blobs: Sequence[bytes | memoryview]) -> Run:
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


def _gbps(runs: Sequence[Run]) -> list[float]:
    return [n * 8 / s / 1e9 for n, s in runs]


async def run_transfer_bench(
    total_bytes: int = 256 << 20,
    chunk_bytes: int = 4 << 20,
    window_bytes: int = 32 << 20,
    repeats: int = 3,
    num_streams: int = 1,
    options: ChannelOptions | None = None,
) -> TransferBenchResult:
    """Throughput of `send_state` (data plane, then in-band) and of raw TCP on loopback, same chunks.

    Each round runs the three paths in turn; the first round is a warm-up. `num_streams` is
    `send_state`'s parallel streams; `options` replaces the production channel/server options on both
    ends of the gRPC stream."""
    chunks = synthetic_chunks(total_bytes, chunk_bytes)
    frames = [frame_chunk(c) for c in chunks]
    blobs = [parse_request(f) for f in frames]  # the chunk bytes inside each frame, as views
    manifest = _manifest(chunks, chunk_bytes)
    runs: dict[str, list[Run]] = {"grpc": [], "inband": [], "tcp": []}
    transport = ""
    async with _Receivers(window_bytes, options) as receivers:
        for i in range(repeats + 1):
            for name, data_plane in (("grpc", True), ("inband", False)):
                stats = await _send_state_once(
                    receivers, f"{name}-{i}", await _export(manifest, frames), num_streams, data_plane
                )
                runs[name].append((stats.kv_bytes, stats.transfer_s))
                transport = stats.transport if data_plane else transport
            runs["tcp"].append(await _tcp_once(receivers.tcp_port, blobs))
    gbps = {name: _gbps(r[1:]) for name, r in runs.items()}
    median = {name: statistics.median(g) for name, g in gbps.items()}
    return TransferBenchResult(
        median["grpc"],
        median["inband"],
        median["tcp"],
        median["grpc"] / median["tcp"],
        median["inband"] / median["tcp"],
        transport,
        total_bytes,
        chunk_bytes,
        sum(len(b) for b in blobs),
        len(chunks),
        num_streams,
        gbps["grpc"],
        gbps["inband"],
        gbps["tcp"],
        *([n for n, _ in runs[name][1:]] for name in ("grpc", "inband", "tcp")),
    )


def format_transfer_table(result: TransferBenchResult) -> str:
    mib = 1 << 20
    streams = f"{result.num_streams} stream{'s' if result.num_streams > 1 else ''}"
    rows = [
        (f"send_state, as deployed ({result.transport} data plane)", result.grpc_gbps, result.grpc_gbps_runs),
        ("send_state, in-band gRPC", result.inband_gbps, result.inband_gbps_runs),
        ("raw asyncio TCP", result.tcp_gbps, result.tcp_gbps_runs),
    ]
    head = (
        f"KV transfer, loopback, {streams}: {result.total_bytes / mib:.0f} MiB in {result.num_chunks} chunks of "
        f"{result.chunk_bytes / mib:g} MiB ({result.wire_bytes} wire bytes)"
    )
    lines = [head, f"{'path':<40} {'Gbit/s':>8}  runs"]
    for name, median, runs in rows:
        lines.append(f"{name:<40} {median:>8.2f}  {', '.join(f'{r:.2f}' for r in runs)}")
    lines.append(f"{'ratio as deployed / TCP (grpc_gbps)':<40} {result.ratio:>8.2f}")
    lines.append(f"{'ratio in-band / TCP':<40} {result.inband_ratio:>8.2f}")
    lines.append(
        "as deployed: open, manifest, credits and commit on gRPC TransferKv, chunk bytes on a TCP data "
        "connection; in-band gRPC copies each byte twice more (send slice, receive bytes)"
    )
    return "\n".join(lines)
