"""The KV data plane's connection protocol: tokens, frames into owned buffers, end marker, failures."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import uvloop

from prfaas.transfer.dataplane import (
    MAGIC,
    DataConnection,
    DataListener,
    DataPlaneError,
    FrameReceiver,
    data_host,
)
from prfaas.transfer.merge import merge


@pytest.fixture
async def listener() -> AsyncIterator[DataListener]:
    started = await DataListener.start("127.0.0.1", 0, max_buffered_bytes=1 << 20, hello_timeout_s=1.0)
    yield started
    await started.close()


async def _connect(listener: DataListener) -> tuple[DataConnection, FrameReceiver]:
    offer = listener.offer()
    sender = await DataConnection.open("127.0.0.1", offer.port, offer.token, timeout_s=5)
    return sender, await offer.connection(5)


async def _collect(receiver: FrameReceiver) -> list[bytes]:
    return [bytes(frame) async for frame in receiver.frames()]


async def test_frames_arrive_whole_and_in_order(listener: DataListener) -> None:
    sender, receiver = await _connect(listener)
    frames = [secrets.token_bytes(n) for n in (1, 300_000, 4096, 2 << 20, 17)]
    collecting = asyncio.create_task(_collect(receiver))
    for frame in frames:
        await sender.send(memoryview(frame))
    await sender.finish()
    assert await collecting == frames
    assert listener.num_accepted == 1
    sender.close()


async def test_buffers_are_reused_once_the_consumer_moves_on(listener: DataListener) -> None:
    sender, receiver = await _connect(listener)
    frames, owners = receiver.frames(), set()
    for _ in range(3):
        await sender.send(memoryview(b"x" * 1000))
        owners.add(id((await anext(frames)).obj))  # asking for the next frame hands the last buffer back
    assert len(owners) == 1
    sender.close()


async def test_reading_pauses_beyond_the_buffer_limit_and_resumes(listener: DataListener) -> None:
    sender, receiver = await _connect(listener)
    frames = [bytes([i]) * (400 << 10) for i in range(8)]  # 3.2 MiB against a 1 MiB limit, nobody consuming
    sending = asyncio.create_task(_send_all(sender, frames))
    await asyncio.sleep(0.2)
    assert receiver._paused
    assert await _collect(receiver) == frames
    await sending


async def _send_all(sender: DataConnection, frames: list[bytes]) -> None:
    for frame in frames:
        await sender.send(memoryview(frame))
    await sender.finish()


async def test_unknown_and_used_tokens_are_refused(listener: DataListener) -> None:
    with pytest.raises(DataPlaneError, match="refused the connection"):
        await DataConnection.open("127.0.0.1", listener.port, secrets.token_bytes(16), timeout_s=5)
    offer = listener.offer()
    first = await DataConnection.open("127.0.0.1", offer.port, offer.token, timeout_s=5)
    with pytest.raises(DataPlaneError, match="refused the connection"):
        await DataConnection.open("127.0.0.1", offer.port, offer.token, timeout_s=5)
    withdrawn = listener.offer()
    listener.withdraw(withdrawn)
    with pytest.raises(DataPlaneError, match="refused the connection"):
        await DataConnection.open("127.0.0.1", withdrawn.port, withdrawn.token, timeout_s=5)
    assert listener.num_accepted == 1
    first.close()


async def test_a_connection_dropped_mid_frame_raises(listener: DataListener) -> None:
    sender, receiver = await _connect(listener)
    await sender.send(memoryview(b"a" * 100))
    sender._writer.write((1000).to_bytes(8, "little") + b"b" * 10)  # a frame cut short
    await sender._writer.drain()
    sender.abort()
    frames = receiver.frames()
    assert bytes(await anext(frames)) == b"a" * 100
    with pytest.raises(DataPlaneError, match="closed before its end marker"):
        await anext(frames)


async def test_a_clean_close_without_the_end_marker_raises(listener: DataListener) -> None:
    sender, receiver = await _connect(listener)
    await sender.send(memoryview(b"a" * 100))
    sender.close()
    with pytest.raises(DataPlaneError, match="closed before its end marker"):
        await _collect(receiver)


async def test_the_sender_learns_when_the_receiver_goes_away(listener: DataListener) -> None:
    sender, receiver = await _connect(listener)
    receiver.abort()
    with pytest.raises(DataPlaneError, match="data connection to"):
        for _ in range(200):  # the kernel buffers a few writes before the reset shows
            await sender.send(memoryview(b"z" * (64 << 10)))


async def test_no_connection_within_the_timeout_raises(listener: DataListener) -> None:
    with pytest.raises(DataPlaneError, match="no data connection within"):
        await listener.offer().connection(0.05)


async def test_a_silent_connection_is_dropped_after_the_hello_timeout(listener: DataListener) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    writer.write(MAGIC)  # half a hello, then nothing
    assert await asyncio.wait_for(reader.read(1), 5) == b""
    writer.close()


async def test_close_aborts_open_connections() -> None:
    listener = await DataListener.start("127.0.0.1")
    sender, receiver = await _connect(listener)
    await listener.close()
    with pytest.raises(DataPlaneError):
        await _collect(receiver)
    sender.close()


@pytest.mark.parametrize(
    ("address", "host"), [("10.0.0.7:50051", "10.0.0.7"), ("[::1]:7000", "::1"), ("decode-0:80", "decode-0")]
)
def test_data_host_is_the_grpc_address_host(address: str, host: str) -> None:
    assert data_host(address) == host


async def _items(*values: int, fail: bool = False, delay_s: float = 0.0) -> AsyncIterator[int]:
    for v in values:
        await asyncio.sleep(delay_s)
        yield v
    if fail:
        raise ValueError("boom")


async def test_merge_yields_everything_and_ends_with_the_last_source() -> None:
    got = [v async for v in merge(_items(1, 2, 3, delay_s=0.01), _items(10, 20))]
    assert sorted(got) == [1, 2, 3, 10, 20]
    assert got.index(10) < got.index(2)  # interleaved, not one after the other


async def test_merge_raises_the_first_error_and_cancels_the_rest() -> None:
    cancelled = asyncio.Event()

    async def forever() -> AsyncIterator[int]:
        try:
            await asyncio.sleep(60)
            yield 0
        finally:
            cancelled.set()

    with pytest.raises(ValueError, match="boom"):
        async for _ in merge(forever(), _items(1, fail=True)):
            pass
    assert cancelled.is_set()


UVLOOP_CASES = [
    test_frames_arrive_whole_and_in_order,
    test_buffers_are_reused_once_the_consumer_moves_on,
    test_reading_pauses_beyond_the_buffer_limit_and_resumes,
    test_unknown_and_used_tokens_are_refused,
    test_a_connection_dropped_mid_frame_raises,
    test_the_sender_learns_when_the_receiver_goes_away,
]


@pytest.mark.parametrize("case", UVLOOP_CASES, ids=lambda case: case.__name__.removeprefix("test_"))
def test_under_uvloop(case: Callable[[DataListener], Awaitable[None]]) -> None:
    """The services run on uvloop, whose transports and read loop differ from asyncio's."""

    async def run() -> None:
        listener = await DataListener.start("127.0.0.1", 0, max_buffered_bytes=1 << 20, hello_timeout_s=1.0)
        try:
            await case(listener)
        finally:
            await listener.close()

    uvloop.run(run())
