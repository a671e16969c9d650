"""The cross-datacenter link cut (100% loss) in the middle of a transfer: the attempt is abandoned once
the PrfaaS worker has been silent to health checks for the router's liveness timeout, the request is
served by local prefill, traffic stays local while the link is down and goes back to PrfaaS once it
returns (needs root for the namespaces; skips without)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterator

import pytest

from prfaas.netem import parse_link_spec
from prfaas.stack import LocalStack
from tests.integration.faults import ENV, LONG, TOPOLOGY, busy_prefill, fault_stack, prompt, run, settled, worker_state

LINK = parse_link_spec("rate=1gbit,delay=1ms")


@pytest.fixture(scope="module")
def stack(linkable: None) -> Iterator[LocalStack]:
    with fault_stack(dataclasses.replace(TOPOLOGY, prfaas_prefill=1), link=LINK) as s:
        yield s


async def _until_prfaas(stack: LocalStack, first_seed: int, timeout_s: float = 20.0) -> str:
    deadline = time.monotonic() + timeout_s
    for seed in range(first_seed, first_seed + 100):
        _, route = await run(stack.router, prompt(LONG // 8, seed), tenant="probe")
        if (route is not None and route.route == "prfaas") or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    return route.route if route is not None else ""


async def test_link_cut_shifts_traffic_local_and_back(stack: LocalStack) -> None:
    assert stack.emulated is not None
    assert await _until_prfaas(stack, 0) == "prfaas"  # warm: channels across the link are up
    baseline = await worker_state(stack)
    ids = prompt(LONG, seed=50)
    calm, route = await run(stack.router, ids, tenant="calm")
    assert route is not None and route.route == "prfaas"

    request = asyncio.create_task(run(stack.router, ids, tenant="cut"))
    await busy_prefill(stack, "prefill-prfaas")
    cut_at = time.monotonic()
    stack.emulated.set(parse_link_spec("loss=100%", base=LINK))
    tokens, route = await request
    bound_s = float(ENV["PRFAAS_LIVENESS_TIMEOUT_S"]) + 10.0  # silent for the liveness timeout, then local
    assert tokens == calm and route is not None and route.route == "local"
    assert time.monotonic() - cut_at < bound_s

    _, route = await run(stack.router, prompt(LONG, seed=51), tenant="cut")
    assert route is not None and route.route == "local"  # the PrfaaS worker is marked down while the link is

    stack.emulated.set(LINK)
    assert await _until_prfaas(stack, 200) == "prfaas"
    assert await settled(stack, baseline, timeout_s=30.0) == baseline
