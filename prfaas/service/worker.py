"""What every worker service shares: its settings (a server running an engine) and what it reports
about its engine (`GetWorkerInfo`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

import grpc

from prfaas.engine.async_engine import AsyncEngine
from prfaas.engine.settings import EngineSettings
from prfaas.service.settings import ServerSettings
from prfaas.service.watch import serve_watch
from prfaas.state.publisher import StatePublisher
from prfaas.v1 import common_pb2, state_pb2


@dataclass(frozen=True)
class WorkerSettings(ServerSettings, EngineSettings):
    """A prefill, decode or PD worker: a gRPC server around one engine."""

    max_queued_requests: int = 256  # requests queued, running or registered here before RESOURCE_EXHAUSTED

    def __post_init__(self) -> None:
        ServerSettings.__post_init__(self)
        EngineSettings.__post_init__(self)
        if self.max_queued_requests < 1:
            raise ValueError("max_queued_requests must be >= 1")


def worker_info(settings: EngineSettings, fingerprint: str) -> common_pb2.WorkerInfo:
    return common_pb2.WorkerInfo(
        block_size=settings.block_size,
        fingerprint=fingerprint,
        model=settings.model,
        max_seqs=settings.max_seqs,
        num_blocks=settings.num_blocks,
    )


class _Worker(Protocol):
    @property
    def settings(self) -> EngineSettings: ...
    @property
    def engine(self) -> AsyncEngine: ...
    @property
    def state(self) -> StatePublisher: ...


class WorkerRpcs:
    """The RPCs every worker's servicer serves the same way (prefill, decode, and so PD): what it runs, and
    its state stream. Mixed in before the generated servicer base."""

    async def GetWorkerInfo(
        self: _Worker, request: common_pb2.GetWorkerInfoRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.GetWorkerInfoResponse:
        return common_pb2.GetWorkerInfoResponse(info=worker_info(self.settings, self.engine.info.fingerprint))

    async def Watch(
        self: _Worker, request: state_pb2.WatchRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[state_pb2.StateEvent]:
        async for event in serve_watch(self.state, context):
            yield event
