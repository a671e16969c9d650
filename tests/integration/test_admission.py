"""Admission control: bounded in-flight requests at the router and bounded queues on the workers; beyond
them RESOURCE_EXHAUSTED with a `retry-after-ms` hint, which the SDK honours."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
import pytest

from prfaas.client import AsyncClient, OverloadedError, Sampling
from prfaas.service.grpc_server import channel
from prfaas.v1 import common_pb2, decode_pb2, decode_pb2_grpc, prefill_pb2, prefill_pb2_grpc
from services.prefill.server import PrefillServicer
from tests.integration.stack import local_stack
from tests.integration.test_e2e import prompt

T = TypeVar("T")
SAMPLING = common_pb2.SamplingParams(max_new_tokens=4, ignore_eos=True)


async def _until(probe: Callable[[], Awaitable[T]], predicate: Callable[[T], bool], timeout_s: float = 15.0) -> None:
    for _ in range(int(timeout_s / 0.02)):
        if predicate(await probe()):
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


async def test_router_sheds_beyond_max_inflight_and_the_sdk_retries_after_the_hint() -> None:
    router_settings = {"max_inflight_requests": 2, "retry_after_ms": 50}
    async with local_stack(threshold_tokens=48, router=router_settings) as stack:
        servicer = stack.servers["router"].servicer
        address = stack.addresses["router"]
        sampling = Sampling(max_new_tokens=4, ignore_eos=True)
        async with AsyncClient(address, retries=0) as client:
            servicer.inflight = 2  # type: ignore[attr-defined]  # two requests in flight
            with pytest.raises(OverloadedError) as err:
                await client.generate(prompt(20, 1), sampling)
            servicer.inflight = 0  # type: ignore[attr-defined]
            shed = await asyncio.gather(
                *(client.generate(prompt(20, 10 + i), sampling) for i in range(6)), return_exceptions=True
            )
        async with AsyncClient(address, retries=20, backoff_s=0.01) as client:
            retried = await asyncio.gather(*(client.generate(prompt(20, 20 + i), sampling) for i in range(6)))
        inflight_after = servicer.inflight  # type: ignore[attr-defined]
    assert err.value.retry_after_s == 0.05 and "max_inflight_requests" in err.value.message
    assert all(isinstance(r, OverloadedError) or len(r.token_ids) == 4 for r in shed)  # type: ignore[union-attr]
    assert sum(isinstance(r, OverloadedError) for r in shed) >= 1
    assert 2 <= sum(not isinstance(r, BaseException) for r in shed) < 6
    assert [len(r.token_ids) for r in retried] == [4] * 6  # every request got through, waiting as told
    assert inflight_after == 0


async def test_decode_worker_queue_is_bounded_and_the_router_forwards_its_hint() -> None:
    async with (
        local_stack(threshold_tokens=48, decode={"max_queued_requests": 1}) as stack,
        channel(stack.addresses["decode-0"]) as ch,
        AsyncClient(stack.addresses["router"], retries=0) as client,
    ):
        decode = decode_pb2_grpc.DecodeServiceStub(ch)
        held = decode.Decode(decode_pb2.DecodeRequest(request_id="held", token_ids=[1, 2, 3], sampling=SAMPLING))
        load = lambda: decode.GetDecodeLoad(decode_pb2.GetDecodeLoadRequest())  # noqa: E731
        await _until(load, lambda r: r.active == 1)
        second = decode.Decode(decode_pb2.DecodeRequest(request_id="two", token_ids=[1], sampling=SAMPLING))
        with pytest.raises(grpc.aio.AioRpcError) as direct:
            await anext(aiter(second))
        with pytest.raises(OverloadedError) as routed:
            await client.generate(prompt(20, 2), Sampling(max_new_tokens=4))
        held.cancel()
        await _until(load, lambda r: r.active == 0)
        after = await client.generate(prompt(20, 2), Sampling(max_new_tokens=4, ignore_eos=True))
    assert direct.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert dict(direct.value.trailing_metadata())["retry-after-ms"] == "500"
    assert "max_queued_requests" in direct.value.details()
    assert routed.value.retry_after_s == 0.5 and "max_queued_requests" in routed.value.message
    assert len(after.token_ids) == 4


async def test_prefill_worker_queue_is_bounded() -> None:
    async with (
        local_stack(
            threshold_tokens=48, prefill={"max_queued_requests": 1}, decode={"register_timeout_s": 10.0}
        ) as stack,
        channel(stack.addresses["prefill-pd"]) as ch,
    ):
        prefill = prefill_pb2_grpc.PrefillServiceStub(ch)

        def request(rid: str) -> prefill_pb2.PrefillRequest:
            return prefill_pb2.PrefillRequest(
                request_id=rid, token_ids=[1, 2, 3], sampling=SAMPLING, decode_address=stack.addresses["decode-0"]
            )

        held = prefill.Prefill(request("unregistered"))  # waits for a Decode registration that never comes
        load = lambda: prefill.GetLoad(prefill_pb2.GetLoadRequest())  # noqa: E731
        await _until(load, lambda r: r.queue_depth == 1)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await prefill.Prefill(request("second"))
        held.cancel()
        await _until(load, lambda r: r.queue_depth == 0 and r.queued_tokens == 0)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert dict(err.value.trailing_metadata())["retry-after-ms"] == "500"


async def test_a_finished_prefill_waits_for_room_on_a_full_decode_worker() -> None:
    """One decode slot, three requests at once: the later transfers wait for the slot (oldest first)
    instead of failing with "engine is full"; with no wait allowed they are refused as overload."""
    long, short = Sampling(max_new_tokens=48, ignore_eos=True), Sampling(max_new_tokens=4, ignore_eos=True)
    prompts = [prompt(60, 40 + i) for i in range(3)]
    admit_all = {"decode_queue_factor": 3}  # the router lets all three through to the one-slot worker
    async with local_stack(threshold_tokens=48, decode={"max_seqs": 1}, router=admit_all) as stack:
        async with AsyncClient(stack.addresses["router"], retries=0) as client:
            first = asyncio.ensure_future(client.generate(prompts[0], long))
            await asyncio.sleep(0.2)
            rest = await asyncio.gather(*(client.generate(p, short) for p in prompts[1:]))
            done = await first
        decode = stack.servers["decode-0"].servicer
        assert decode.receiver.pending == {}  # type: ignore[attr-defined]
    assert len(done.token_ids) == 48 and [len(r.token_ids) for r in rest] == [4, 4]

    async with (
        local_stack(threshold_tokens=48, decode={"max_seqs": 1, "import_wait_s": 0}, router=admit_all) as stack,
        AsyncClient(stack.addresses["router"], retries=0) as client,
    ):
        first = asyncio.ensure_future(client.generate(prompts[0], Sampling(max_new_tokens=400, ignore_eos=True)))
        await asyncio.sleep(0.2)
        with pytest.raises(OverloadedError) as refused:
            await client.generate(prompts[1], short)
        first.cancel()
    assert "engine is full" in refused.value.message


async def test_the_router_refuses_a_request_no_decode_worker_has_room_for_before_any_prefill(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Decode admission: with one slot and decode_queue_factor 1, a second request is refused at once with
    RESOURCE_EXHAUSTED and a retry hint, and no prefill worker sees it; once the first finishes it goes."""
    prefills: list[str] = []
    prefill = PrefillServicer.Prefill

    async def counted(self: PrefillServicer, request: prefill_pb2.PrefillRequest, context: object) -> object:
        prefills.append(request.request_id)
        return await prefill(self, request, context)  # type: ignore[arg-type]

    monkeypatch.setattr(PrefillServicer, "Prefill", counted)
    short = Sampling(max_new_tokens=4, ignore_eos=True)
    async with (
        local_stack(threshold_tokens=48, decode={"max_seqs": 1}, router={"decode_queue_factor": 1}) as stack,
        AsyncClient(stack.addresses["router"], retries=0) as client,
    ):
        first = asyncio.ensure_future(client.generate(prompt(60, 50), Sampling(max_new_tokens=200, ignore_eos=True)))
        await asyncio.sleep(0.3)
        with pytest.raises(OverloadedError) as refused:
            await client.generate(prompt(60, 51), short)
        assert len(prefills) == 1  # only the first request's
        await first
        after = await client.generate(prompt(60, 51), short)
    assert "every decode worker is full" in refused.value.message and refused.value.retry_after_s == 1.0
    assert len(after.token_ids) == 4
