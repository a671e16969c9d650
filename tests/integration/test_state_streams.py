"""Workers' and pools' state streams (`Watch`) on real servers: a request's blocks arrive as the prompt's
chained hashes, a restarted worker is a new instance without the old blocks, and a subscriber that does
not read leaves the source's queue bounded and is resynced with a fresh snapshot."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import torch

from prfaas.engine.sampling import SamplingParams
from prfaas.kv.changes import KvDelta
from prfaas.kv.prefix import block_hashes
from prfaas.service.convert import tenant_salt
from prfaas.service.grpc_server import channel
from prfaas.state import StatePublisher
from prfaas.state.stream import DEFAULT_MAX_QUEUED
from prfaas.v1 import cachepool_pb2_grpc, common_pb2, decode_pb2_grpc, prefill_pb2_grpc, router_pb2, state_pb2
from services.cachepool.server import build_server as build_pool
from services.cachepool.settings import CachePoolSettings
from services.decode.server import build_server as build_decode
from services.decode.settings import DecodeSettings
from services.pd.server import build_server as build_pd
from services.pd.settings import PdSettings
from tests.integration.stack import collect, local_stack

BS = 16
STUBS: dict[str, Callable[[grpc.aio.Channel], Any]] = {
    "decode": decode_pb2_grpc.DecodeServiceStub,
    "prefill": prefill_pb2_grpc.PrefillServiceStub,
    "pool": cachepool_pb2_grpc.CachePoolServiceStub,
}


@dataclass
class Mirror:
    """What a subscriber knows of one source: every stream rule checked, every delta applied."""

    instance_id: str = ""
    seq: int = 0
    blocks: set[bytes] = field(default_factory=set)
    snapshots: set[bytes] = field(default_factory=set)
    load: state_pb2.LoadReport = field(default_factory=state_pb2.LoadReport)
    info: common_pb2.WorkerInfo = field(default_factory=common_pb2.WorkerInfo)

    def apply(self, event: state_pb2.StateEvent) -> None:
        kind = event.WhichOneof("event")
        if kind == "snapshot":
            self.instance_id, self.seq = event.instance_id, event.seq
            self.blocks, self.snapshots = set(event.snapshot.block_hashes), set(event.snapshot.snapshot_hashes)
            self.load, self.info = event.snapshot.load, event.snapshot.info
            return
        assert (event.instance_id, event.seq) == (self.instance_id, self.seq + 1), "no gap, one instance"
        self.seq = event.seq
        if kind == "kv":
            self.blocks = (set() if event.kv.cleared else self.blocks) - set(event.kv.removed) | set(event.kv.stored)
            self.snapshots = self.snapshots - set(event.kv.snapshots_removed) | set(event.kv.snapshots_stored)
        else:
            self.load = event.load


@contextlib.asynccontextmanager
async def mirrored(address: str, kind: str) -> AsyncIterator[Mirror]:
    """Subscribe to a source and apply its stream in the background."""
    mirror = Mirror()
    async with channel(address) as ch:
        call = STUBS[kind](ch).Watch(state_pb2.WatchRequest())
        first = await call.read()
        assert first.WhichOneof("event") == "snapshot"
        mirror.apply(first)

        async def follow() -> None:
            async for event in call:
                mirror.apply(event)

        task = asyncio.create_task(follow())
        yield mirror
        call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def prompt(n: int, seed: int) -> list[int]:
    return torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


async def test_a_request_s_blocks_reach_the_streams_of_its_workers_and_pool() -> None:
    ids = prompt(100, 7)  # 6 full blocks; 100 + 3 computed tokens stay in the 7th
    expected = set(block_hashes(ids, BS, tenant_salt("acme")))
    sampling = common_pb2.SamplingParams(max_new_tokens=4, ignore_eos=True)
    request = router_pb2.GenerateRequest(tenant_id="acme", token_ids=router_pb2.TokenIds(ids=ids), sampling=sampling)
    async with local_stack(threshold_tokens=48, block_size=BS) as stack:
        at = stack.addresses
        async with (
            mirrored(at["decode-0"], "decode") as decode,
            mirrored(at["prefill-prfaas"], "prefill") as prefill,
            mirrored(at["pool-prfaas"], "pool") as pool,
        ):
            assert decode.blocks == prefill.blocks == pool.blocks == set()
            assert decode.load.slots > 0 and decode.load.free_blocks == 512
            await collect(stack.router, request)
            await until(lambda: len(pool.blocks) == 6 and prefill.load.prefill_samples and not decode.load.registered)
            assert decode.blocks == prefill.blocks == pool.blocks == expected
            assert prefill.snapshots == pool.snapshots == expected  # a snapshot at every block boundary
            assert prefill.load.queue_depth == 0 and prefill.load.prefill_samples[0].tokens == 100
            assert decode.load.free_blocks == 512  # the finished request's blocks are free (and cached)


async def test_a_restarted_worker_is_a_new_instance_without_the_old_blocks() -> None:
    settings = DecodeSettings(block_size=BS, max_prefill_tokens=64, num_blocks=64)
    params = SamplingParams(max_new_tokens=2, ignore_eos=True)
    instances = []
    for _ in range(2):
        running, cleanup = await build_decode(settings)
        try:
            async with mirrored(f"127.0.0.1:{running.port}", "decode") as mirror:
                assert mirror.blocks == set()  # nothing of the previous instance
                engine = running.servicer.engine  # type: ignore[attr-defined]
                await engine.call(lambda e: e.generate([prompt(40, 1)], params))
                await until(lambda: len(mirror.blocks) == 2)
                instances.append(mirror.instance_id)
        finally:
            await running.stop(0.1)
            await cleanup()
    assert instances[0] != instances[1]


async def test_a_pd_worker_has_one_stream_for_both_roles_and_a_stop_ends_it() -> None:
    running, cleanup = await build_pd(PdSettings(block_size=BS, max_prefill_tokens=64, num_blocks=64, max_seqs=5))
    try:
        address = f"127.0.0.1:{running.port}"
        async with mirrored(address, "decode") as as_decode, mirrored(address, "prefill") as as_prefill:
            assert as_decode.instance_id == as_prefill.instance_id
            assert (as_decode.load.slots, as_decode.load.free_blocks) == (5, 64)
            assert (as_prefill.info.block_size, as_prefill.info.max_seqs) == (BS, 5)
            loop = asyncio.get_running_loop()
            start = loop.time()
            await running.stop(30)  # the streams end at once instead of holding the grace period
            assert loop.time() - start < 5
    finally:
        await cleanup()


async def test_a_subscriber_that_does_not_read_is_dropped_to_a_fresh_snapshot() -> None:
    running, cleanup = await build_pool(CachePoolSettings())
    state: StatePublisher = running.servicer.state  # type: ignore[attr-defined]
    hashes = tuple(bytes([i % 256, i // 256]) * 8 for i in range(64))
    try:
        async with channel(f"127.0.0.1:{running.port}") as ch:
            call = cachepool_pb2_grpc.CachePoolServiceStub(ch).Watch(state_pb2.WatchRequest())
            assert (await call.read()).WhichOneof("event") == "snapshot"
            most = 0
            for _ in range(20):  # ~25 MB of deltas while the subscriber reads nothing
                for _ in range(1000):
                    state.publish_kv(KvDelta(stored=hashes))
                    most = max(most, *state.stream.queued())
                await asyncio.sleep(0.01)
            assert most <= DEFAULT_MAX_QUEUED
            seqs = []
            while (event := await asyncio.wait_for(call.read(), 10)).WhichOneof("event") != "snapshot":
                seqs.append(event.seq)  # what gRPC had buffered before the source's queue overflowed
            assert event.seq > (seqs[-1] if seqs else 0) + 1  # a jump, then the resync
            assert list(event.snapshot.block_hashes) == []  # what the pool really holds
            state.publish_kv(KvDelta(stored=(b"last",)))
            mirror = Mirror()
            mirror.apply(event)
            while b"last" not in mirror.blocks:  # caught up: snapshots and deltas by the rules from here
                mirror.apply(await asyncio.wait_for(call.read(), 10))
            call.cancel()
    finally:
        await running.stop(0.1)
        await cleanup()
