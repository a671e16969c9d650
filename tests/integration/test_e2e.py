"""The disaggregated request path end to end: router -> pools -> prefill worker -> decode worker."""

from __future__ import annotations

import asyncio
import dataclasses

import grpc
import pytest
import torch

from prfaas.engine.engine import Engine, EngineConfig
from prfaas.engine.sampling import SamplingParams
from prfaas.v1 import common_pb2, router_pb2
from tests.integration.stack import collect, local_stack

MAX_NEW = 6


def offline(prompts: list[list[int]]) -> list[list[int]]:
    engine = Engine.from_pretrained("kimi-linear-tiny", EngineConfig(block_size=16, max_prefill_tokens=64))
    return [r.token_ids for r in engine.generate(prompts, SamplingParams(max_new_tokens=MAX_NEW, ignore_eos=True))]


def request(ids: list[int], **kw: object) -> router_pb2.GenerateRequest:
    sampling = common_pb2.SamplingParams(max_new_tokens=MAX_NEW, ignore_eos=True)
    return router_pb2.GenerateRequest(token_ids=router_pb2.TokenIds(ids=ids), sampling=sampling, **kw)


def prompt(n: int, seed: int) -> list[int]:
    return torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


async def test_both_routes_and_prefix_hit_match_offline() -> None:
    short, long_ = prompt(20, 1), prompt(100, 2)
    expected = offline([short, long_])
    async with local_stack(threshold_tokens=48) as stack:
        got_short, route_short = await collect(stack.router, request(short))
        got_long, route_long = await collect(stack.router, request(long_))
        again, route_again = await collect(stack.router, request(long_))
    assert got_short == expected[0] and route_short.route == common_pb2.ROUTE_LOCAL
    assert got_long == expected[1] and route_long.route == common_pb2.ROUTE_PRFAAS
    assert route_long.kv_bytes > 0 and "> t=48" in route_long.reason
    assert again == expected[1]
    assert route_again.cached_tokens >= 64  # the decode worker already holds the prefix
    assert route_again.kv_bytes < route_long.kv_bytes  # only what it lacks was sent


async def test_prefill_workers_publish_to_their_cluster_pool() -> None:
    from prfaas.service.grpc_server import channel
    from prfaas.v1 import cachepool_pb2, cachepool_pb2_grpc

    async with local_stack(threshold_tokens=48) as stack:
        await collect(stack.router, request(prompt(100, 3)))
        pool = cachepool_pb2_grpc.CachePoolServiceStub(channel(stack.addresses["pool-prfaas"]))
        for _ in range(100):
            stats = await pool.GetStats(cachepool_pb2.GetStatsRequest())
            if stats.entries:
                break
            await asyncio.sleep(0.02)
    assert stats.entries >= 6  # 6 full blocks of 16 tokens (+ their snapshots)


async def test_parallel_streams_and_a_small_credit_window_give_the_same_tokens() -> None:
    long_ = prompt(150, 4)
    expected = offline([long_])
    async with local_stack(threshold_tokens=48, transfer_streams=3, credit_window_bytes=8192, chunk_bytes=4096) as st:
        got, route = await collect(st.router, request(long_))
    assert got == expected[0] and route.route == common_pb2.ROUTE_PRFAAS
    assert route.kv_bytes > 20 * 8192  # far more than one window: credits had to flow back


@pytest.mark.parametrize("kv_transport", ["tcp", "grpc"])
async def test_both_kv_transports_give_the_same_tokens(kv_transport: str) -> None:
    long_ = prompt(150, 5)
    expected = offline([long_])
    async with local_stack(threshold_tokens=48, transfer_streams=2) as st:
        prefill = st.servers["prefill-prfaas"].servicer
        prefill.settings = dataclasses.replace(prefill.settings, kv_transport=kv_transport)  # type: ignore[attr-defined]
        got, route = await collect(st.router, request(long_))
        data_connections = st.servers["decode-0"].servicer.receiver.data.num_accepted  # type: ignore[attr-defined]
    assert got == expected[0] and route.route == common_pb2.ROUTE_PRFAAS
    assert data_connections == (2 if kv_transport == "tcp" else 0)  # tcp: one data connection per stream


async def test_sixteen_concurrent_requests_match_offline() -> None:
    prompts = [prompt(10 + 7 * i, 100 + i) for i in range(16)]
    expected = offline(prompts)
    async with local_stack(threshold_tokens=48, num_decode=2) as stack:
        results = await asyncio.gather(*(collect(stack.router, request(p)) for p in prompts))
    assert [ids for ids, _ in results] == expected
    assert {r.route for _, r in results} == {common_pb2.ROUTE_LOCAL, common_pb2.ROUTE_PRFAAS}


@pytest.mark.parametrize(
    ("req", "message"),
    [
        (request([]), "prompt is empty"),
        (request([1, 600]), "outside the vocabulary"),
        (request(list(range(10)) * 7000), "exceeds the model"),
        (request([1, 2], tenant_id="bad tenant!"), "tenant id"),
        (router_pb2.GenerateRequest(), "prompt is missing"),
        (request([1, 2], resume_token_ids=list(range(MAX_NEW))), "nothing is left to generate"),
        (request([1, 2], resume_token_ids=[3, 600]), "resume_token_ids holds a token id outside"),
    ],
)
async def test_bad_requests_are_invalid_argument(req: router_pb2.GenerateRequest, message: str) -> None:
    async with local_stack() as stack:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await collect(stack.router, req)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in (info.value.details() or "")
        ids, _ = await collect(stack.router, request([1, 2, 3]))  # still serving
        assert len(ids) == MAX_NEW


async def _free_blocks(stack: object) -> tuple[int, int, int, int]:
    from prfaas.service.grpc_server import channel
    from prfaas.v1 import decode_pb2, decode_pb2_grpc, prefill_pb2, prefill_pb2_grpc

    addrs = stack.addresses  # type: ignore[attr-defined]
    channels = {name: channel(addrs[name]) for name in ("decode-0", "prefill-prfaas", "prefill-pd")}
    dec = await decode_pb2_grpc.DecodeServiceStub(channels["decode-0"]).GetDecodeLoad(decode_pb2.GetDecodeLoadRequest())
    pre = [
        await prefill_pb2_grpc.PrefillServiceStub(channels[name]).GetLoad(prefill_pb2.GetLoadRequest())
        for name in ("prefill-prfaas", "prefill-pd")
    ]
    for ch in channels.values():
        await ch.close()
    return dec.free_blocks, dec.active, pre[0].free_blocks, pre[1].free_blocks


async def test_cancel_mid_generation_frees_blocks_everywhere() -> None:
    async with local_stack(threshold_tokens=48) as stack:
        baseline = await _free_blocks(stack)
        long_req = router_pb2.GenerateRequest(
            token_ids=router_pb2.TokenIds(ids=prompt(100, 7)),
            sampling=common_pb2.SamplingParams(max_new_tokens=400, ignore_eos=True),
        )
        call = stack.router.Generate(long_req, timeout=60)
        seen = 0
        async for msg in call:
            seen += len(msg.token_ids)
            if seen >= 3:
                break
        during = await _free_blocks(stack)
        call.cancel()
        for _ in range(100):  # within a second
            if await _free_blocks(stack) == baseline:
                break
            await asyncio.sleep(0.01)
        assert during[0] < baseline[0] and during[1] == 1  # the decode worker held blocks while generating
        assert await _free_blocks(stack) == baseline


async def test_every_service_serves_health_and_reflection() -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    from prfaas.service.grpc_server import channel

    expected = {
        "router": "prfaas.v1.RouterService",
        "decode-0": "prfaas.v1.DecodeService",
        "prefill-pd": "prfaas.v1.PrefillService",
        "pool-pd": "prfaas.v1.CachePoolService",
    }
    async with local_stack() as stack:
        for name, service in expected.items():
            ch = channel(stack.addresses[name])
            health = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            stream = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            )
            names = [s.name async for r in stream for s in r.list_services_response.service]
            assert service in names and "grpc.health.v1.Health" in names


async def test_graceful_stop_lets_in_flight_requests_finish() -> None:
    async with local_stack() as stack:
        req = router_pb2.GenerateRequest(
            token_ids=router_pb2.TokenIds(ids=prompt(30, 9)),
            sampling=common_pb2.SamplingParams(max_new_tokens=40, ignore_eos=True),
        )
        call = stack.router.Generate(req, timeout=60)
        first = await call.read()
        stopping = asyncio.create_task(stack.servers["router"].stop(30))
        rest = []
        while (msg := await call.read()) is not grpc.aio.EOF:
            rest.append(msg)
        await stopping
        assert len(first.token_ids) + sum(len(m.token_ids) for m in rest) == 40
        with pytest.raises(grpc.aio.AioRpcError):
            await collect(stack.router, request([1, 2, 3]))  # no new work once stopped


async def test_errors_are_counted_by_status_code() -> None:
    from prfaas.telemetry.metrics import ERRORS

    before = ERRORS.labels("in-process", "INVALID_ARGUMENT")._value.get()
    async with local_stack() as stack:
        with pytest.raises(grpc.aio.AioRpcError):
            await collect(stack.router, request([]))
    assert ERRORS.labels("in-process", "INVALID_ARGUMENT")._value.get() == before + 1
