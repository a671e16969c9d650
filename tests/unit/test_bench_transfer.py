"""The KV transfer benchmark: all three paths deliver every byte, and its receiver double keeps the protocol."""

from __future__ import annotations

import itertools

import grpc
import pytest

from prfaas.bench.transfer import FINGERPRINT, format_transfer_table, run_transfer_bench, synthetic_chunks
from prfaas.bench.transfer_receiver import BenchReceiver
from prfaas.service.grpc_server import CHANNEL_OPTIONS, channel, start_server
from prfaas.transfer.framing import add_decode_service
from prfaas.v1 import decode_pb2, decode_pb2_grpc

TOTAL, CHUNK = 4 << 20, 256 << 10


@pytest.mark.parametrize(
    ("num_streams", "options"), [(1, None), (3, None), (1, [*CHANNEL_OPTIONS, ("grpc.http2.bdp_probe", 0)])]
)
async def test_all_paths_deliver_every_byte(num_streams: int, options: list[tuple[str, int]] | None) -> None:
    result = await run_transfer_bench(
        TOTAL, CHUNK, window_bytes=1 << 20, repeats=2, num_streams=num_streams, options=options
    )
    assert result.num_streams == num_streams and result.transport == "tcp"  # grpc_gbps measured the data plane
    chunks = synthetic_chunks(TOTAL, CHUNK)
    assert sum(c.tensor.numel() * 4 for c in chunks) == TOTAL
    assert result.num_chunks == len(chunks) == TOTAL // CHUNK
    assert result.wire_bytes == sum(len(c.to_bytes()) for c in chunks) > TOTAL
    assert result.grpc_delivered == result.inband_delivered == result.tcp_delivered == [result.wire_bytes] * 2
    assert min(result.grpc_gbps, result.inband_gbps, result.tcp_gbps) > 0
    assert result.ratio == pytest.approx(result.grpc_gbps / result.tcp_gbps)
    assert result.inband_ratio == pytest.approx(result.inband_gbps / result.tcp_gbps)
    assert len(result.grpc_gbps_runs) == len(result.inband_gbps_runs) == len(result.tcp_gbps_runs) == 2
    table = format_transfer_table(result)
    for label in ("tcp data plane", "in-band gRPC", "raw asyncio TCP", "ratio as deployed", "ratio in-band"):
        assert label in table


def test_synthetic_chunks_cover_rows_in_order() -> None:
    chunks = synthetic_chunks(1 << 20, 300 << 10)  # a short last chunk
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    assert all(a.key.row_end == b.key.row_start for a, b in itertools.pairwise(chunks))
    assert sum(c.tensor.numel() * 4 for c in chunks) == 1 << 20


def _open(stream_index: int = 0) -> decode_pb2.TransferKvRequest:
    opened = decode_pb2.TransferOpen(request_id="r", fingerprint=FINGERPRINT, stream_index=stream_index)
    return decode_pb2.TransferKvRequest(open=opened)


async def _exchange(messages: list[decode_pb2.TransferKvRequest]) -> list[decode_pb2.TransferKvResponse]:
    """Send `messages` on one TransferKv stream to the receiver double and collect its replies."""
    receiver = BenchReceiver(window_bytes=1 << 20)
    running = await start_server(
        "127.0.0.1",
        0,
        [lambda s: add_decode_service(receiver, s)],
        [],  # raw TransferKv, like the real worker
    )
    try:
        async with channel(f"127.0.0.1:{running.port}") as chan:
            call = decode_pb2_grpc.DecodeServiceStub(chan).TransferKv(timeout=5)
            for msg in messages:
                await call.write(msg)
            await call.done_writing()
            return [reply async for reply in call]
    finally:
        await running.stop(0)


async def test_receiver_follows_the_protocol() -> None:
    data = synthetic_chunks(64 << 10, 64 << 10)[0].to_bytes()
    commit = decode_pb2.TransferKvRequest(commit=decode_pb2.TransferCommit(first_token_id=7))
    replies = await _exchange([_open(), decode_pb2.TransferKvRequest(chunk=data), commit])
    assert [r.WhichOneof("msg") for r in replies] == ["accept", "credit_bytes", "done"]
    assert replies[0].accept.start_tokens == 0 and replies[0].accept.credit_bytes == 1 << 20
    assert replies[1].credit_bytes == len(data) and replies[2].done.kv_bytes == len(data)
    extra = await _exchange([_open(1), decode_pb2.TransferKvRequest(chunk=data)])  # a parallel stream: chunks only
    assert [r.WhichOneof("msg") for r in extra] == ["accept", "credit_bytes"]


async def test_receiver_rejects_a_corrupted_chunk() -> None:
    data = bytearray(synthetic_chunks(64 << 10, 64 << 10)[0].to_bytes())
    data[-1] ^= 0xFF  # flip payload bits: the CRC no longer matches
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _exchange([_open(), decode_pb2.TransferKvRequest(chunk=bytes(data))])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "checksum" in (err.value.details() or "")


async def test_receiver_requires_open_first_a_commit_and_only_chunks_on_parallel_streams() -> None:
    chunk = decode_pb2.TransferKvRequest(chunk=synthetic_chunks(64 << 10, 64 << 10)[0].to_bytes())
    commit = decode_pb2.TransferKvRequest(commit=decode_pb2.TransferCommit(first_token_id=1))
    for messages in ([chunk], [_open(), chunk], [_open(1), chunk, commit]):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _exchange(messages)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
