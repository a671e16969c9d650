"""The state streams of workers and cache pools: what their snapshots hold, where their changes come from,
and the load every worker reports whatever its role."""

from __future__ import annotations

from collections.abc import Iterable

from prfaas.engine.async_engine import AsyncEngine
from prfaas.kv.changes import KvState
from prfaas.pool.pool import HybridPrefixPool
from prfaas.state.publisher import StatePublisher
from prfaas.v1 import common_pb2, state_pb2

DECODE_SAMPLES = 64  # the newest decode steps a report carries


def engine_publisher(engine: AsyncEngine, info: common_pb2.WorkerInfo) -> StatePublisher:
    """A worker's stream: its engine's prefix cache, slots, free blocks and measured decode steps. The roles
    it serves add their own load (`StatePublisher.add_load`); a PD worker's two roles share one stream."""

    async def snapshot() -> state_pb2.StateSnapshot:
        return snapshot_pb(await engine.kv_state(), info)

    publisher = StatePublisher(snapshot)
    publisher.add_load(lambda: engine_load(engine))
    engine.on_kv(publisher.publish_kv)
    return publisher


def pool_publisher(pool: HybridPrefixPool) -> StatePublisher:
    """A cache pool's stream: the blocks and snapshots it holds (no load)."""

    async def snapshot() -> state_pb2.StateSnapshot:
        return snapshot_pb(await pool.held())

    publisher = StatePublisher(snapshot)
    pool.on_kv(publisher.publish_kv)
    return publisher


def engine_load(engine: AsyncEngine) -> state_pb2.LoadReport:
    return state_pb2.LoadReport(
        slots=engine.info.max_seqs, free_blocks=engine.free_blocks, decode_samples=decode_samples(engine.decode_steps)
    )


def decode_samples(steps: Iterable[tuple[int, float]]) -> list[state_pb2.DecodeStepSample]:
    """The newest measured decode steps, (batch, seconds) each, oldest first."""
    return [state_pb2.DecodeStepSample(batch=b, seconds=s) for b, s in list(steps)[-DECODE_SAMPLES:]]


def snapshot_pb(state: KvState, info: common_pb2.WorkerInfo | None = None) -> state_pb2.StateSnapshot:
    return state_pb2.StateSnapshot(block_hashes=state.block_hashes, snapshot_hashes=state.snapshot_hashes, info=info)
