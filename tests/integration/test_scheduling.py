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
