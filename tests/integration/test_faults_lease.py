"""KV leases: a decode worker never waits forever for a state whose sender vanished."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from prfaas.service.grpc_server import channel
from prfaas.telemetry import metrics
from prfaas.v1 import common_pb2, decode_pb2, decode_pb2_grpc
from tests.integration.stack import local_stack


async def test_registration_without_state_is_dropped_when_its_lease_expires() -> None:
    """A Decode registration whose transfer never comes (the router or the prefill worker died in between)
    ends with ABORTED after the lease, is counted as missing KV, and leaves nothing registered."""
    async with local_stack(decode={"kv_lease_s": 0.4}) as stack:
        stub = decode_pb2_grpc.DecodeServiceStub(channel(stack.addresses["decode-0"]))
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
