"""The KV data plane between `send_state` and a real decode worker: the same state and tokens as the
in-band path, a refused token or a dropped data connection fails the transfer clearly and leaves no
blocks held on the decode side."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest

from prfaas.engine.engine import Engine, EngineConfig, ExportRequest
from prfaas.engine.sampling import SamplingParams
from prfaas.service.grpc_server import RunningServer, channel
from prfaas.transfer import dataplane
from prfaas.transfer.framing import frame_chunk
from prfaas.transfer.sender import DataPlaneTarget, PreparedExport, TransferError, TransferStats, send_state
from prfaas.v1 import common_pb2, decode_pb2, decode_pb2_grpc
from services.decode.server import DecodeServicer
from services.decode.server import build_server as build_decode
from services.decode.settings import DecodeSettings
from tests.integration.test_e2e import MAX_NEW, offline, prompt

CONFIG = EngineConfig(block_size=16, max_prefill_tokens=64)
TCP = DataPlaneTarget("127.0.0.1")


@asynccontextmanager
async def decode_worker(**settings: float) -> AsyncIterator[RunningServer]:
    running, cleanup = await build_decode(DecodeSettings(block_size=16, max_prefill_tokens=64, **settings))  # type: ignore[arg-type]
    try:
        yield running
    finally:
        await running.stop(0.5)
        await cleanup()


def _servicer(worker: RunningServer) -> DecodeServicer:
    assert isinstance(worker.servicer, DecodeServicer)
    return worker.servicer


@asynccontextmanager
async def registered(worker: RunningServer, ids: list[int]) -> AsyncIterator[tuple[grpc.aio.Channel, Any]]:
    """A channel to the worker and a `Decode` call registering request "r" (cancelled on exit)."""
    async with channel(f"127.0.0.1:{worker.port}") as chan:
        sampling = common_pb2.SamplingParams(max_new_tokens=MAX_NEW, ignore_eos=True)
        decoding = decode_pb2_grpc.DecodeServiceStub(chan).Decode(
            decode_pb2.DecodeRequest(request_id="r", token_ids=ids, sampling=sampling)
        )
        try:
            yield chan, decoding
        finally:
            decoding.cancel()


async def send(
    chan: grpc.aio.Channel, ids: list[int], data_plane: DataPlaneTarget | None, num_streams: int = 1
) -> TransferStats:
    """Prefill "r" on a local engine and send its state with `send_state`."""
    prefill = Engine.from_pretrained("kimi-linear-tiny", CONFIG)
    params = SamplingParams(max_new_tokens=MAX_NEW, ignore_eos=True)

    async def prepare(start_tokens: int) -> PreparedExport:
        chunks: asyncio.Queue[bytes] = asyncio.Queue()
        export = ExportRequest(lambda c: chunks.put_nowait(frame_chunk(c)), start_tokens, 0, 2048)
        prefill.add_request(ids, params, "r", export=export)
        manifest = prefill.manifest("r")
        first = asyncio.get_running_loop().create_future()
        while prefill.has_work:
            for ev in prefill.step():
                first = asyncio.get_running_loop().create_future()
                first.set_result(ev.token_id)
        return PreparedExport(manifest, chunks, first)

    return await send_state(chan, "r", 0, prefill.spec.fingerprint(), prepare, 30.0, num_streams, data_plane)


async def transfer(
    worker: RunningServer, ids: list[int], data_plane: DataPlaneTarget | None, num_streams: int = 1
) -> tuple[list[int], TransferStats]:
    """Register, send the state, collect the generated tokens."""
    async with registered(worker, ids) as (chan, decoding):
        stats = await send(chan, ids, data_plane, num_streams)
        return [t async for msg in decoding for t in msg.token_ids], stats


@pytest.mark.parametrize("num_streams", [1, 3])
async def test_data_plane_and_in_band_carry_the_same_state(num_streams: int) -> None:
    ids = prompt(150, 11)
    expected = offline([ids])[0]
    runs = {}
    for data_plane in (TCP, None):
        async with decode_worker(credit_window_bytes=8192) as worker:
            runs[data_plane is not None] = await transfer(worker, ids, data_plane, num_streams)
            accepted = _servicer(worker).receiver.data.num_accepted  # type: ignore[union-attr]
            assert accepted == (num_streams if data_plane else 0)
    (tcp_tokens, tcp), (grpc_tokens, grpc) = runs[True], runs[False]
    assert tcp_tokens == grpc_tokens == expected
    assert (tcp.transport, grpc.transport) == ("tcp", "grpc")
    assert tcp.kv_bytes == grpc.kv_bytes > 20 * 8192  # far more than a window: credits flowed back
    assert tcp.num_chunks == grpc.num_chunks and tcp.num_streams == num_streams


async def test_a_receiver_without_a_data_plane_gets_the_chunks_in_band() -> None:
    ids = prompt(100, 12)
    async with decode_worker() as worker:
        _servicer(worker).receiver.data = None
        tokens, stats = await transfer(worker, ids, TCP)
    assert tokens == offline([ids])[0] and stats.transport == "grpc"


async def _free_blocks(worker: RunningServer) -> tuple[int, int]:
    return await _servicer(worker).engine.call(lambda e: (e.cache.blocks.num_free, len(e.importing)))


async def _settled(worker: RunningServer, baseline: tuple[int, int]) -> tuple[int, int]:
    for _ in range(100):
        now = await _free_blocks(worker)
        if now == baseline:
            break
        await asyncio.sleep(0.02)
    return now


async def test_a_refused_token_fails_the_transfer(monkeypatch: pytest.MonkeyPatch) -> None:
    opened = dataplane.DataConnection.open.__func__  # type: ignore[attr-defined]

    async def wrong_token(cls: type, host: str, port: int, token: bytes, *args: object) -> object:
        return await opened(cls, host, port, bytes(16), *args)

    monkeypatch.setattr(dataplane.DataConnection, "open", classmethod(wrong_token))
    async with decode_worker() as worker:
        baseline = await _free_blocks(worker)
        ids = prompt(100, 13)
        async with registered(worker, ids) as (chan, _):
            with pytest.raises(TransferError, match="refused the connection"):
                await send(chan, ids, TCP)
            assert await _settled(worker, baseline) == baseline


@pytest.mark.parametrize("num_streams", [1, 2])
async def test_a_dropped_data_connection_fails_the_transfer_and_frees_its_blocks(
    monkeypatch: pytest.MonkeyPatch, num_streams: int
) -> None:
    sent = 0
    original = dataplane.DataConnection.send

    async def drop_after_three(self: dataplane.DataConnection, chunk: memoryview) -> None:
        nonlocal sent
        sent += 1
        if sent == 4:
            self._writer.write(len(chunk).to_bytes(8, "little") + bytes(chunk[:100]))  # half a frame
            await self._writer.drain()
            self.abort()
        await original(self, chunk)

    monkeypatch.setattr(dataplane.DataConnection, "send", drop_after_three)
    async with decode_worker(credit_window_bytes=8192) as worker:
        baseline = await _free_blocks(worker)
        ids = prompt(150, 14)
        async with registered(worker, ids) as (chan, _):
            with pytest.raises(TransferError, match="data connection"):
                await send(chan, ids, TCP, num_streams)
            assert 4 <= sent <= 4 + num_streams - 1  # other streams may have one send under way when it breaks
            # still registered with Decode, yet nothing half-imported holds blocks
            assert "r" in _servicer(worker).receiver.pending
            assert await _settled(worker, baseline) == baseline


@pytest.mark.parametrize("data_plane", [TCP, None], ids=["tcp", "in-band"])
async def test_a_refused_transfer_leaves_no_writer_behind(data_plane: DataPlaneTarget | None) -> None:
    """The receiver ends the call first (no registration: NOT_FOUND): the sender passes its status on and
    none of its streams' request writers stays blocked (grpc's own `write()` proxy would, forever)."""
    async with (
        decode_worker(register_timeout_s=0.2, import_wait_s=0) as worker,
        channel(f"127.0.0.1:{worker.port}") as chan,
    ):
        with pytest.raises(grpc.aio.AioRpcError, match="no Decode registration"):
            await send(chan, prompt(100, 15), data_plane, num_streams=2)
        await asyncio.sleep(0.1)
        writers = [t for t in asyncio.all_tasks() if "consume_request_iterator" in repr(t.get_coro())]
    assert writers == []
