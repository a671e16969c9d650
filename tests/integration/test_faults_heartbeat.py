"""HTTP/2 keepalive is the heartbeat of long-lived calls: when the path to a peer goes silent without a
connection being closed (a cut link, a host gone), both ends give the call up within ~15 s instead of
waiting for its deadline, and the server frees what the call held."""

from __future__ import annotations

import asyncio
import contextlib
import time

import grpc

from prfaas.service.grpc_server import KEEPALIVE_MS, KEEPALIVE_TIMEOUT_MS, channel
from prfaas.v1 import common_pb2, decode_pb2, decode_pb2_grpc
from services.decode.server import DecodeServicer
from services.decode.server import build_server as build_decode
from services.decode.settings import DecodeSettings


class BlackholeProxy:
    """A TCP proxy that can go silent: `freeze()` stops forwarding in both directions but keeps every
    connection open, as a cut link does."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.pumps: set[asyncio.Task[None]] = set()
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers += [writer, up_writer]
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(src, dst))
            self.pumps.add(task)

    @staticmethod
    async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()

    def freeze(self) -> None:
        for task in self.pumps:
            task.cancel()

    async def close(self) -> None:
        self.freeze()
        for w in self.writers:
            w.close()
        self.server.close()


async def test_a_silent_path_breaks_a_waiting_call_on_both_ends_within_the_keepalive() -> None:
    running, cleanup = await build_decode(DecodeSettings(block_size=16, num_blocks=64, kv_lease_s=600))
    proxy = BlackholeProxy(running.port)
    port = await proxy.start()
    servicer = running.servicer
    assert isinstance(servicer, DecodeServicer)
    try:
        async with channel(f"127.0.0.1:{port}") as ch:
            sampling = common_pb2.SamplingParams(max_new_tokens=4)
            call = decode_pb2_grpc.DecodeServiceStub(ch).Decode(
                decode_pb2.DecodeRequest(request_id="waiting", token_ids=[1, 2, 3], sampling=sampling), timeout=120
            )
            for _ in range(200):  # registered: the call now waits for a KV transfer that will not come
                if "waiting" in servicer.receiver.pending:
                    break
                await asyncio.sleep(0.02)
            assert "waiting" in servicer.receiver.pending
            proxy.freeze()
            started = time.monotonic()
            try:
                await call.read()
                raise AssertionError("the call should have broken")
            except grpc.aio.AioRpcError as err:
                client_s = time.monotonic() - started
                assert err.code() == grpc.StatusCode.UNAVAILABLE
            limit_s = 2 * (KEEPALIVE_MS + KEEPALIVE_TIMEOUT_MS) / 1000
            while "waiting" in servicer.receiver.pending and time.monotonic() - started < limit_s:
                await asyncio.sleep(0.1)
            server_s = time.monotonic() - started
        assert client_s < limit_s  # not the call's 120 s deadline
        assert "waiting" not in servicer.receiver.pending and server_s < limit_s  # the server side let go as well
    finally:
        with contextlib.suppress(Exception):
            await proxy.close()
        await running.stop(0.5)
        await cleanup()
