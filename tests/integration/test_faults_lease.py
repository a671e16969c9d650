"""KV leases: a decode worker never waits forever for a state whose sender vanished."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
import pytest

from prfaas.service.grpc_server import channel
from prfaas.telemetry import metrics
from prfaas.v1 import common_pb2, decode_pb2, decode_pb2_grpc
from services.pd.server import build_server as build_pd
from services.pd.settings import PdSettings
from tests.integration.stack import local_stack


@asynccontextmanager
async def decode_role(kind: str) -> AsyncIterator[str]:
    """The address of a decode worker, or of a dual-role PD worker, with a 0.4 s KV lease."""
    if kind == "decode":
        async with local_stack(decode={"kv_lease_s": 0.4}) as stack:
            yield stack.addresses["decode-0"]
        return
    server, cleanup = await build_pd(PdSettings(block_size=16, num_blocks=128, kv_lease_s=0.4))
    try:
        yield f"127.0.0.1:{server.port}"
    finally:
        await server.stop(0.5)
        await cleanup()


@pytest.mark.parametrize("kind", ["decode", "pd"])
async def test_registration_without_state_is_dropped_when_its_lease_expires(kind: str) -> None:
    """A Decode registration whose transfer never comes (the router or the prefill worker died in between)
    ends with ABORTED after the lease, is counted as missing KV, and leaves nothing registered; on a decode
    worker and on a dual-role PD worker alike."""
    async with decode_role(kind) as address:
        stub = decode_pb2_grpc.DecodeServiceStub(channel(address))
        missing = metrics.KV_TRANSFERS_MISSING._value.get()
        sampling = common_pb2.SamplingParams(max_new_tokens=4)
        request = decode_pb2.DecodeRequest(request_id="orphan", token_ids=[1, 2, 3], sampling=sampling)
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in stub.Decode(request, timeout=10):
                pass
        assert err.value.code() == grpc.StatusCode.ABORTED
        assert "expected but not received" in (err.value.details() or "")
        assert 0.4 <= time.monotonic() - started < 2.0
        assert metrics.KV_TRANSFERS_MISSING._value.get() == missing + 1
        await asyncio.sleep(0.05)
        load = await stub.GetDecodeLoad(decode_pb2.GetDecodeLoadRequest())
        assert load.active == 0
