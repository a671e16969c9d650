"""Faults with real processes (mock engines): a request survives a killed prefill or decode worker with
the tokens of an undisturbed run, a cache pool that is down or hung costs only its cache, a router restart
costs clients one retry; and afterwards no worker holds a block or a request it should not."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator

import pytest

from prfaas.client.errors import UnavailableError
from prfaas.stack import LocalStack
from tests.integration.faults import (
    LONG,
    SHORT,
    busy_prefill,
    fault_stack,
    kill,
    metric,
    prompt,
    run,
    settled,
    wait_metric,
    worker_state,
)


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    with fault_stack() as s:
        yield s


@pytest.fixture
async def baseline(stack: LocalStack) -> dict[str, tuple[int, int]]:
    return await worker_state(stack)


@pytest.mark.parametrize("at", [0.2, 0.7])
async def test_prefill_worker_killed_mid_transfer_is_retried_with_the_same_tokens(
    stack: LocalStack, baseline: dict[str, tuple[int, int]], at: float
) -> None:
    """The state streams layer by layer while the prefill computes, so a kill early (20%) or late (70%) in
    the prefill cuts a transfer in progress: the decode worker drops the partial state, the router retries
    on the other PrfaaS worker with a new attempt."""
    ids = prompt(LONG, seed=int(at * 10))
    calm, calm_route = await run(stack.router, ids, tenant="calm")
    assert calm_route is not None and calm_route.prefill_s > 1.0
    retries = metric(stack, "prfaas_request_retries_total", failed="prefill")
    request = asyncio.create_task(run(stack.router, ids, tenant="faulty"))
    victim = await busy_prefill(stack, "prefill-prfaas")
    await asyncio.sleep(at * calm_route.prefill_s)
    kill(victim)
    tokens, route = await request
    assert tokens == calm and len(tokens) == 16
    assert route is not None and route.route == "prfaas" and route.prefill_worker != victim.internal
    assert metric(stack, "prfaas_request_retries_total", failed="prefill") == retries + 1
    stack.restart(victim.name)
    assert await settled(stack, baseline) == baseline


@pytest.mark.parametrize("fault", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "hung"])
async def test_decode_worker_lost_mid_generation_continues_on_another(
    stack: LocalStack, baseline: dict[str, tuple[int, int]], fault: signal.Signals
) -> None:
    """The router re-admits the request on the other decode worker with prompt + the tokens so far: at once
    when the worker died (its stream breaks), after the liveness timeout when it hangs (it answers no
    health check; its stream stays open)."""
    ids = prompt(SHORT, seed=3)
    calm, _ = await run(stack.router, ids, tenant="calm", max_new=24)
    started = asyncio.Event()
    request = asyncio.create_task(run(stack.router, ids, tenant="faulty", max_new=24, on_token=started))
    await asyncio.wait_for(started.wait(), 30)
    await asyncio.sleep(0.5)
    decoders = [s for s in stack.services if s.name.startswith("decode")]
    states = await worker_state(stack)
    victim = next(s for s in decoders if states[s.name][1])  # the one generating
    retries = metric(stack, "prfaas_request_retries_total", failed="decode")
    kill(victim, fault)
    try:
        tokens, route = await asyncio.wait_for(request, 60)
    finally:
        if fault == signal.SIGSTOP:
            kill(victim, signal.SIGCONT)
    assert tokens == calm and len(tokens) == 24
    assert route is not None and route.decode_worker == victim.internal  # the client saw the first route
    assert metric(stack, "prfaas_request_retries_total", failed="decode") == retries + 1
    if fault == signal.SIGKILL:
        stack.restart(victim.name)
    assert await settled(stack, baseline) == baseline


@pytest.mark.parametrize("fault", [signal.SIGKILL, signal.SIGSTOP], ids=["down", "hung"])
async def test_cache_pool_down_or_hung_serves_without_cache_and_recovers(
    stack: LocalStack, baseline: dict[str, tuple[int, int]], fault: signal.Signals
) -> None:
    pool = stack.service("cachepool-prfaas")
    address = pool.internal
    kill(pool, fault)
    try:
        for seed in (10, 11):  # the first finds the pool broken, the second goes around it
            tokens, route = await run(stack.router, prompt(LONG // 4, seed), tenant="pool")
            assert len(tokens) == 16 and route is not None and route.route == "prfaas"
        assert await wait_metric(stack, "prfaas_backend_up", 0.0, address=address) == 0.0
    finally:
        if fault == signal.SIGSTOP:
            pool.proc.send_signal(signal.SIGCONT)
        else:
            stack.restart(pool.name)
    assert await wait_metric(stack, "prfaas_backend_up", 1.0, timeout_s=15, address=address) == 1.0
    await run(stack.router, prompt(LONG // 4, 12), tenant="pool")
    # another tenant (new per variant: the stack and its pools outlive one variant) holds nothing of it
    _, again = await run(stack.router, prompt(LONG // 4, 12), tenant=f"pool-b-{fault.name}")
    assert again is not None and again.route == "prfaas"
    assert await settled(stack, baseline) == baseline


async def test_router_restart_clients_retry_and_workers_keep_nothing(
    stack: LocalStack, baseline: dict[str, tuple[int, int]]
) -> None:
    """Streams cut mid-generation: without resume the client gets UNAVAILABLE; with it (the default) the
    SDK continues after the tokens it has once the router is back, with an undisturbed run's tokens. A
    request sent while the router is down completes through retries. The workers keep nothing."""
    ids = prompt(SHORT, 20)
    calm, _ = await run(stack.router, ids, "calm", max_new=60)
    started = [asyncio.Event(), asyncio.Event()]
    strict = asyncio.create_task(run(stack.router, ids, "r", max_new=60, on_token=started[0], resume=False))
    resumed = asyncio.create_task(
        run(stack.router, ids, "r", max_new=60, on_token=started[1], retries=10, backoff_s=0.5)
    )
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), 30)
    kill(stack.service("router"))
    with pytest.raises(UnavailableError):  # mid-stream, resume off: the SDK must not retry
        await strict
    assert await settled(stack, baseline) == baseline  # the workers dropped the orphaned requests
    retried = asyncio.create_task(run(stack.router, prompt(SHORT, 21), "r", retries=10, backoff_s=0.5))
    await asyncio.sleep(0.5)  # the clients' first tries find no router
    stack.restart("router")  # from this thread: a child dies with the thread that started it
    tokens, route = await retried
    assert len(tokens) == 16 and route is not None
    continued, first_route = await resumed
    assert continued == calm and len(continued) == 60  # one stream, the tokens of an unbroken call
    assert first_route is not None  # from the first call; the resumed call adds none
    assert await settled(stack, baseline) == baseline
