"""What every worker service shares: its settings (a server running an engine) and what it reports
about its engine (`GetWorkerInfo`)."""

from __future__ import annotations

from dataclasses import dataclass

from prfaas.engine.settings import EngineSettings
from prfaas.service.settings import ServerSettings
from prfaas.v1 import common_pb2


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
