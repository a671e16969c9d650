"""Routing without asking: the router decides from the workers' and pools' state streams. No request makes a
probe RPC; the prefix the router sees equals what the sources hold; a stale view costs a smaller hit, never
a wrong token; a source that restarts or goes away leaves the router's index."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from prfaas.kv.prefix import block_hashes
from prfaas.v1 import common_pb2
from services.cachepool.server import CachePoolServicer
from services.decode.server import DecodeServicer
from services.prefill.server import PrefillServicer
from services.router.server import RouterServicer
from tests.integration.stack import Stack, collect, local_stack
from tests.integration.test_e2e import offline, prompt, request

PROBES = [
    (DecodeServicer, "MatchPrefix"),
    (DecodeServicer, "GetDecodeLoad"),
    (PrefillServicer, "GetLoad"),
    (CachePoolServicer, "LookupPrefix"),
]


@pytest.fixture
def probes(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter[str]]:
    """Counts every call of the RPCs the router used to make before each decision (patched on the classes
    before the servers register them)."""
    calls: Counter[str] = Counter()
    for cls, name in PROBES:
        original = getattr(cls, name)

        async def counted(self: Any, request: Any, context: Any, _name: str = name, _fn: Any = original) -> Any:
            calls[_name] += 1
            return await _fn(self, request, context)

        monkeypatch.setattr(cls, name, counted)
    yield calls


def _router(stack: Stack) -> RouterServicer:
    servicer = stack.servers["router"].servicer
    assert isinstance(servicer, RouterServicer)
    return servicer


async def synced(stack: Stack, timeout_s: float = 10.0) -> RouterServicer:
    """The router once every source's stream delivered its snapshot."""
    router = _router(stack)
    sources = [a for n, a in stack.addresses.items() if n != "router"]
    deadline = time.monotonic() + timeout_s
    while not all(router.table.synced(a) for a in sources):
        assert time.monotonic() < deadline, "state streams did not sync"
        await asyncio.sleep(0.02)
    return router


async def settle(router: RouterServicer, source: str, blocks: int, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while router.table.index.held(source)[0] < blocks:
        assert time.monotonic() < deadline, f"{source} never reported {blocks} blocks"
        await asyncio.sleep(0.02)


async def test_requests_make_no_probe_rpc_and_match_offline(probes: Counter[str]) -> None:
    short, long_ = prompt(20, 11), prompt(100, 12)
    expected = offline([short, long_])
    async with local_stack(threshold_tokens=48) as stack:
        router = await synced(stack)
        got = [await collect(stack.router, request(p)) for p in (short, long_, long_)]
    assert [ids for ids, _ in got] == [expected[0], expected[1], expected[1]]
    routes = [r.route for _, r in got]  # type: ignore[attr-defined]
    assert routes == [common_pb2.ROUTE_LOCAL, common_pb2.ROUTE_PRFAAS, common_pb2.ROUTE_LOCAL]
    assert got[2][1].cached_tokens > 0  # type: ignore[attr-defined]  # the repeat hits the decode worker's prefix
    assert sum(probes.values()) == 0, probes  # the pool hint spared the prefill workers their lookups too
    assert router.watcher.resyncs == 0


async def test_the_index_holds_what_the_decode_worker_holds() -> None:
    ids = prompt(100, 21)
    async with local_stack(threshold_tokens=48) as stack:
        router = await synced(stack)
        _, route = await collect(stack.router, request(ids, tenant_id="acme"))
        decoder = route.decode_worker  # type: ignore[attr-defined]
        hashes = block_hashes(ids, 16, b"acme")
        await settle(router, decoder, 6)
        index = router.table.index
        assert index.deepest(hashes, 99 // 16, index.mask([decoder])) == (6, [decoder])
        other_tenant = block_hashes(ids, 16, b"other")
        assert index.deepest(other_tenant, 99 // 16, index.every) == (0, [])


async def test_a_stale_index_costs_a_smaller_hit_never_a_wrong_token() -> None:
    ids = prompt(100, 31)
    [expected] = offline([ids])
    async with local_stack(threshold_tokens=48) as stack:
        router = await synced(stack)
        await collect(stack.router, request(ids))
        pools = [stack.addresses["pool-prfaas"], stack.addresses["pool-pd"]]
        for address in pools:  # the pools lose everything, but the router is told the opposite
            pool = stack.servers[next(n for n, a in stack.addresses.items() if a == address)].servicer
            await pool.pool.clear()  # type: ignore[union-attr]
        await asyncio.sleep(0.3)
        for address in pools:
            router.table.index.update(address, stored=block_hashes(ids, 16), snapshots_stored=block_hashes(ids, 16))
        for decoder in router.roles.members("decode"):
            router.table.index.drop(decoder)
        got, route = await collect(stack.router, request(ids))
    assert got == expected and route is not None


async def test_a_decode_worker_that_goes_away_leaves_the_index_and_is_marked_down() -> None:
    ids = prompt(100, 41)
    async with local_stack(threshold_tokens=48, num_decode=2) as stack:
        router = await synced(stack)
        _, route = await collect(stack.router, request(ids))
        decoder = route.decode_worker  # type: ignore[attr-defined]
        await settle(router, decoder, 6)
        name = next(n for n, a in stack.addresses.items() if a == decoder)
        await stack.servers[name].stop(0.1)
        deadline = time.monotonic() + 10
        while router.table.index.held(decoder) != (0, 0) or router.health.is_up(decoder):
            assert time.monotonic() < deadline, "the stopped worker is still in the index"
            await asyncio.sleep(0.05)
        ids2 = prompt(100, 42)
        [expected] = offline([ids2])
        got, route2 = await collect(stack.router, request(ids2))
    assert got == expected and route2.decode_worker != decoder  # type: ignore[attr-defined]
