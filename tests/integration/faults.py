"""What the fault tests share: a real-process stack of mock engines and the worker state that must return
to its baseline after a fault (free blocks, registered and queued requests)."""

from __future__ import annotations

import asyncio
import signal
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
import numpy as np

from prfaas.client import AsyncClient, Sampling
from prfaas.client.types import RouteInfo
from prfaas.netem import LinkSpec
from prfaas.stack import LocalStack, Service, Topology
from prfaas.telemetry.metrics import parse_metrics
from prfaas.v1 import decode_pb2, decode_pb2_grpc, prefill_pb2, prefill_pb2_grpc

# Prefill of LONG tokens takes ~4 s on a PrfaaS mock worker, a decode step ~0.1 s: long enough to kill a
# worker in the middle of either, short enough for a test that runs in seconds.
TOPOLOGY = Topology(
    engine="mock",
    prfaas_prefill=2,
    decode=2,
    block_size=16,
    threshold_tokens=256,
    time_scale=1.0,
    decode_step_scale=3.0,
    max_model_len=16384,
)
ENV = {
    "PRFAAS_HEALTH_INTERVAL_S": "0.5",  # router: re-probe a backend marked down twice a second
    "PRFAAS_LIVENESS_TIMEOUT_S": "3",  # router: a prefill worker silent to health checks this long is given up
    "PRFAAS_TRANSFER_TIMEOUT_S": "8",  # prefill workers: the deadline of a whole KV transfer
    "PRFAAS_KV_LEASE_S": "5",  # decode workers: drop a registration whose state shows no progress this long
}
LONG, SHORT = 8000, 100


def prompt(n: int, seed: int = 0) -> list[int]:
    return [int(t) for t in np.random.default_rng(seed).integers(1, 500, n)]


@contextmanager
def fault_stack(topology: Topology = TOPOLOGY, link: LinkSpec | None = None) -> Iterator[LocalStack]:
    import os

    saved = {k: os.environ.get(k) for k in ENV}
    os.environ.update(ENV)
    try:
        with LocalStack(topology, link=link) as stack:
            yield stack
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


async def run(
    router: str,
    ids: list[int],
    tenant: str,
    max_new: int = 16,
    on_token: asyncio.Event | None = None,
    **client: object,
) -> tuple[list[int], RouteInfo | None]:
    """Generate greedily; `on_token` is set once the first token arrives."""
    tokens: list[int] = []
    route = None
    async with AsyncClient(router, timeout_s=90, **client) as c:  # type: ignore[arg-type]
        async for chunk in c.stream(ids, Sampling(max_new_tokens=max_new, ignore_eos=True), tenant_id=tenant):
            route = chunk.route or route
            tokens.extend(chunk.token_ids)
            if tokens and on_token is not None:
                on_token.set()
    return tokens, route


def by_address(stack: LocalStack, address: str) -> Service:
    return next(s for s in stack.services if address in (s.address, s.internal))


def kill(service: Service, sig: signal.Signals = signal.SIGKILL) -> None:
    service.proc.send_signal(sig)
    if sig == signal.SIGKILL:
        service.proc.wait(10)


async def busy_prefill(stack: LocalStack, prefix: str, timeout_s: float = 10.0) -> Service:
    """The first prefill worker named `prefix`* with a request queued or running."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for s in stack.services:
            if s.name.startswith(prefix) and s.proc.poll() is None:
                async with grpc.aio.insecure_channel(s.address) as ch:
                    load = await prefill_pb2_grpc.PrefillServiceStub(ch).GetLoad(prefill_pb2.GetLoadRequest())
                if load.queue_depth:
                    return s
        await asyncio.sleep(0.05)
    raise TimeoutError(f"no {prefix} worker became busy")


async def worker_state(stack: LocalStack) -> dict[str, tuple[int, int]]:
    """(free blocks, requests registered or queued) of every live worker."""
    state: dict[str, tuple[int, int]] = {}
    for s in stack.services:
        if s.proc.poll() is not None:
            continue
        async with grpc.aio.insecure_channel(s.address) as ch:
            if s.name.startswith("decode"):
                d = await decode_pb2_grpc.DecodeServiceStub(ch).GetDecodeLoad(decode_pb2.GetDecodeLoadRequest())
                state[s.name] = (d.free_blocks, d.active)
            elif s.name.startswith("prefill"):
                p = await prefill_pb2_grpc.PrefillServiceStub(ch).GetLoad(prefill_pb2.GetLoadRequest())
                state[s.name] = (p.free_blocks, p.queue_depth)
    return state


async def settled(stack: LocalStack, baseline: dict[str, tuple[int, int]], timeout_s: float = 15.0) -> dict:
    """The workers' state once it equals `baseline` (or, after `timeout_s`, as it is)."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = await worker_state(stack)
        if state == baseline or time.monotonic() > deadline:
            return state
        await asyncio.sleep(0.2)


def router_metrics(stack: LocalStack) -> dict:
    address = stack.service("router").metrics_address
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as resp:
        return parse_metrics(resp.read().decode())


def metric(stack: LocalStack, name: str, **labels: str) -> float:
    return router_metrics(stack).get((name, frozenset(labels.items())), 0.0)


async def wait_metric(stack: LocalStack, name: str, value: float, timeout_s: float = 10.0, **labels: str) -> float:
    deadline = time.monotonic() + timeout_s
    while (got := metric(stack, name, **labels)) != value and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    return got
