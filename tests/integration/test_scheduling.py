"""The router drives the routing policies with live measurements (short and long timescale)."""

from __future__ import annotations

import pytest
import torch

from prfaas.v1 import common_pb2, router_pb2
from tests.integration.stack import collect, local_stack

SAMPLING = common_pb2.SamplingParams(max_new_tokens=3, ignore_eos=True)


def request(n: int, seed: int) -> router_pb2.GenerateRequest:
    ids = torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(seed)).tolist()
    return router_pb2.GenerateRequest(token_ids=router_pb2.TokenIds(ids=ids), sampling=SAMPLING)


@pytest.mark.parametrize(
    ("policy", "expected"), [("homogeneous", common_pb2.ROUTE_LOCAL), ("naive", common_pb2.ROUTE_PRFAAS)]
)
async def test_baseline_policies_route_everything_one_way(policy: str, expected: int) -> None:
    async with local_stack(threshold_tokens=48, router={"policy": policy}) as stack:
        routes = [(await collect(stack.router, request(n, n)))[1] for n in (10, 100)]
    assert [r.route for r in routes] == [expected, expected]
    assert all(policy in r.reason for r in routes)


async def test_prefix_held_by_prfaas_moves_to_the_computing_cluster() -> None:
    async with local_stack(threshold_tokens=48) as stack:
        first = (await collect(stack.router, request(100, 5)))[1]
        second = (await collect(stack.router, request(100, 5)))[1]
    assert first.route == common_pb2.ROUTE_PRFAAS
    assert second.route == common_pb2.ROUTE_LOCAL  # only 4 uncached tokens: compute locally ...
    assert "prefix moves from prfaas" in second.reason  # ... with the PrfaaS cluster's prefix copied over
    assert second.cached_tokens >= 96


async def test_prfaas_down_falls_back_to_local() -> None:
    async with local_stack(threshold_tokens=48) as stack:
        await stack.servers["prefill-prfaas"].stop(0)
        _, route = await collect(stack.router, request(100, 6))
    assert route.route == common_pb2.ROUTE_LOCAL
    assert "PrfaaS unavailable" in route.reason


async def test_long_timescale_refits_profiles_and_replans_t() -> None:
    from services.router.server import RouterServicer

    async with local_stack(threshold_tokens=48, router={"replan_period_s": 0.0}) as stack:
        for n in (20, 30, 40, 60, 80, 120, 160, 200):
            await collect(stack.router, request(n, 1000 + n))
        await collect(stack.router, request(10, 1))  # the router's latest probes now carry every sample
        servicer = stack.servers["router"].servicer
        assert isinstance(servicer, RouterServicer)
        before = servicer.control.policy.threshold_tokens
        assert servicer.control.replan()
    assert servicer.control.replans == 1
    assert servicer.control.policy.threshold_tokens != before


async def test_dual_role_pd_workers_are_converted_after_draining() -> None:
    from prfaas.sched.policy import Split
    from prfaas.service.grpc_server import channel
    from prfaas.v1 import router_pb2_grpc
    from services.pd.server import build_server as build_pd
    from services.pd.settings import PdSettings
    from services.prefill.server import build_server as build_prefill
    from services.prefill.settings import PrefillSettings
    from services.router.server import RouterServicer
    from services.router.server import build_server as build_router
    from services.router.settings import RouterSettings

    common = dict(block_size=16, max_prefill_tokens=64, num_blocks=256)
    started = [await build_pd(PdSettings(**common)) for _ in range(3)]  # type: ignore[arg-type]
    started.append(await build_prefill(PrefillSettings(cluster="prfaas", **common)))  # type: ignore[arg-type]
    pd = ",".join(f"127.0.0.1:{s.port}" for s, _ in started[:3])
    router = await build_router(
        RouterSettings(
            prfaas_prefill=f"127.0.0.1:{started[3][0].port}",
            pd_workers=pd,
            pd_prefill_workers=2,
            threshold_tokens=48,
            block_size=16,
            replan_period_s=0,
        )
    )
    started.append(router)
    try:
        servicer = router[0].servicer
        assert isinstance(servicer, RouterServicer)
        assert servicer.roles.split() == Split(2, 1)
        assert await servicer.rebalance(Split(1, 2)) == 1
        assert servicer.roles.split() == Split(1, 2) and servicer.roles.switches == 1
        stub = router_pb2_grpc.RouterServiceStub(channel(f"127.0.0.1:{router[0].port}"))
        results = [await collect(stub, request(n, n)) for n in (10, 20, 100)]
        assert [len(ids) for ids, _ in results] == [3, 3, 3]
        assert {r.decode_worker for _, r in results} <= set(servicer.roles.members("decode"))
        assert {r.prefill_worker for _, r in results if r.route == common_pb2.ROUTE_LOCAL} <= set(
            servicer.roles.members("prefill")
        )
    finally:
        for server, cleanup in reversed(started):
            await server.stop(0.5)
            await cleanup()
