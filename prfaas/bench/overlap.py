"""Overlap benchmark: how much of a KV transfer layer-wise streaming hides behind the prefill.

Given a real prefill worker and a real decode worker on loopback (`prfaas bench overlap` starts both
in-process), one long prompt is prefilled on the prefill worker and its state streamed to the decode
worker. The prefill worker reports when the prefill computation ended and when the decode worker
acknowledged the complete state (`tail_s`), and how many bytes the last layer produced. The target: the
tail is at most the time to send the last layer's bytes (measured on raw loopback TCP in the same run)
plus 20 ms.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, dataclass

import torch

from prfaas.service.grpc_server import channel
from prfaas.v1 import common_pb2, decode_pb2, decode_pb2_grpc, prefill_pb2, prefill_pb2_grpc

SLACK_S = 0.020


@dataclass(frozen=True, slots=True)
class OverlapResult:
    prompt_tokens: int
    prefill_s: float
    transfer_s: float
    tail_s: float
    kv_bytes: int
    last_layer_bytes: int
    last_layer_send_s: float  # raw loopback TCP time for the last layer's bytes
    budget_s: float  # last_layer_send_s + 20 ms
    within_budget: bool

    def as_dict(self) -> dict[str, float | int | bool]:
        return asdict(self)


async def tcp_send_s(num_bytes: int) -> float:
    """Time to push `num_bytes` through a loopback TCP connection and get the receiver's ack."""
    done = asyncio.get_running_loop().create_future()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got = 0
        while got < num_bytes:
            got += len(await reader.read(1 << 20))
        writer.write(b"k")
        await writer.drain()
        writer.close()
        done.set_result(None)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    payload = bytes(num_bytes)
    t0 = time.perf_counter()
    writer.write(payload)
    await writer.drain()
    await reader.readexactly(1)
    elapsed = time.perf_counter() - t0
    writer.close()
    await done
    server.close()
    return elapsed


async def run_overlap_bench(
    workers: AbstractAsyncContextManager[tuple[str, str]], prompt_tokens: int = 8192
) -> OverlapResult:
    """Stream one prompt's state from the prefill to the decode worker of `workers` (which yields their
    addresses, prefill first, and stops them on exit), then time its last layer on raw TCP once they stopped."""
    async with workers as (prefill, decode):
        resp = await _prefill_and_decode(prefill, decode, prompt_tokens)
    send_s = await tcp_send_s(resp.last_layer_bytes)
    budget = send_s + SLACK_S
    return OverlapResult(
        prompt_tokens,
        resp.prefill_s,
        resp.transfer_s,
        resp.tail_s,
        resp.kv_bytes,
        resp.last_layer_bytes,
        send_s,
        budget,
        resp.tail_s <= budget,
    )


async def _prefill_and_decode(prefill: str, decode: str, prompt_tokens: int) -> prefill_pb2.PrefillResponse:
    ids = torch.randint(0, 256, (prompt_tokens,), generator=torch.Generator().manual_seed(1)).tolist()
    sampling = common_pb2.SamplingParams(max_new_tokens=2, ignore_eos=True)
    dec = decode_pb2_grpc.DecodeServiceStub(channel(decode))
    pre = prefill_pb2_grpc.PrefillServiceStub(channel(prefill))
    stream = dec.Decode(decode_pb2.DecodeRequest(request_id="overlap", token_ids=ids, sampling=sampling))
    resp = await pre.Prefill(
        prefill_pb2.PrefillRequest(request_id="overlap", token_ids=ids, sampling=sampling, decode_address=decode)
    )
    async for _ in stream:
        pass
    return resp


def format_overlap(r: OverlapResult) -> str:
    return "\n".join(
        [
            f"prompt tokens                      {r.prompt_tokens}",
            f"prefill compute (s)                {r.prefill_s:.3f}",
            f"transfer open -> ack (s)           {r.transfer_s:.3f}",
            f"KV bytes sent                      {r.kv_bytes:,}",
            f"end of prefill -> decode ready (s) {r.tail_s * 1000:.1f} ms",
            f"last layer bytes                   {r.last_layer_bytes:,}",
            f"last layer over raw loopback TCP   {r.last_layer_send_s * 1000:.1f} ms",
            f"budget (that + 20 ms)              {r.budget_s * 1000:.1f} ms -> "
            + ("met" if r.within_budget else "MISSED"),
        ]
    )
