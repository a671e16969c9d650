"""A local PrfaaS-PD deployment: how many workers of each kind, how they run, and the settings each service
of it starts with.

Every knob that configures a service defaults to that service's own default (one source per default). The
settings built here are the services' own dataclasses: a topology checks its workers' and pools' settings
when it is made, before any process starts; the router's need the workers' addresses, so they are built
(and checked) once the workers run.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from prfaas.engine.settings import EngineSettings
from prfaas.sched.routing import PD, PRFAAS
from services.cachepool.settings import CachePoolSettings
from services.decode.settings import DecodeSettings
from services.pd.settings import PdSettings
from services.prefill.settings import PrefillSettings
from services.router.settings import RouterSettings

CLUSTERS = (PRFAAS, PD)  # the PrfaaS cluster and the local PD cluster; each has its own cache pool


@dataclass(frozen=True, slots=True)
class RouterBackends:
    """Where the router finds the workers and pools it routes to (comma-separated host:port lists)."""

    decode: str = ""
    prfaas_prefill: str = ""
    pd_prefill: str = ""
    pd_workers: str = ""
    prfaas_pool: str = ""
    pd_pool: str = ""


@dataclass(frozen=True, slots=True)
class Topology:
    """How many workers of each kind, and how they run. Also readable from a JSON file (`--config`)."""

    engine: str = EngineSettings.engine
    model: str = EngineSettings.model
    prfaas_prefill: int = 1
    pd_prefill: int = 1
    decode: int = 1
    pd_workers: int = 0  # dual-role PD workers (the router converts them between prefill and decode)
    pd_prefill_workers: int = 0  # how many of them start as prefill workers
    policy: str = RouterSettings.policy
    link_gbps: float = RouterSettings.link_gbps
    replan_period_s: float = RouterSettings.replan_period_s
    threshold_tokens: int = RouterSettings.threshold_tokens
    block_size: int = EngineSettings.block_size
    router_port: int = 0
    http_port: int | None = 0  # the router's OpenAI HTTP API: 0 any free port, None off
    time_scale: float = EngineSettings.time_scale
    bytes_scale: float = EngineSettings.bytes_scale
    decode_step_scale: float = EngineSettings.decode_step_scale  # mock engines: longer decode steps (fewer tokens)
    token_scale: int = EngineSettings.token_scale  # mock engines: paper tokens per mock token
    num_blocks: int = EngineSettings.num_blocks  # KV blocks per engine
    max_seqs: int = EngineSettings.max_seqs  # sequences per engine (the decode batch limit)
    max_prefill_tokens: int = EngineSettings.max_prefill_tokens  # prefill chunk per engine step
    snapshot_every_blocks: int = EngineSettings.snapshot_every_blocks
    max_model_len: int = RouterSettings.max_model_len  # router-side prompt limit; 0 = the model's own
    pool_backend: str = CachePoolSettings.backend

    def __post_init__(self) -> None:
        decoders = self.decode + self.pd_workers - self.pd_prefill_workers
        if decoders < 1 or self.prfaas_prefill + self.pd_prefill + self.pd_prefill_workers < 1:
            raise ValueError("a topology needs at least one decode worker and one prefill worker")
        self.pd_settings()  # a PD worker has every worker knob: the engine's and both roles' own checks
        self.cachepool_settings()

    @classmethod
    def read(cls, path: Path) -> dict[str, Any]:
        """The keys of a topology JSON file; unknown keys are an error."""
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: cannot read topology ({exc})") from exc
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"{path}: unknown keys {unknown}; known: {sorted(known)}")
        return dict(raw)

    @classmethod
    def from_file(cls, path: Path, **overrides: object) -> Topology:
        """The file's topology, with the `overrides` that are not None on top."""
        return cls(**{**cls.read(path), **{k: v for k, v in overrides.items() if v is not None}})

    # -- the settings each service starts with --------------------------------------------------------------
    def engine_settings(self) -> EngineSettings:
        """The engine knobs every worker shares."""
        return EngineSettings(
            model=self.model,
            engine=self.engine,
            block_size=self.block_size,
            num_blocks=self.num_blocks,
            max_seqs=self.max_seqs,
            max_prefill_tokens=self.max_prefill_tokens,
            snapshot_every_blocks=self.snapshot_every_blocks,
            time_scale=self.time_scale,
            bytes_scale=self.bytes_scale,
            decode_step_scale=self.decode_step_scale,
            token_scale=self.token_scale,
        )

    def decode_settings(self) -> DecodeSettings:
        return DecodeSettings(**asdict(self.engine_settings()))

    def prefill_settings(self, cluster: str, pool: str = "") -> PrefillSettings:
        """A prefill worker of `cluster` ("prfaas" or "pd"): its mock follows that cluster's hardware profile."""
        return PrefillSettings(**asdict(replace(self.engine_settings(), mock_role=cluster)), cluster=cluster, pool=pool)

    def pd_settings(self, pool: str = "") -> PdSettings:
        """A dual-role worker of the PD cluster."""
        return PdSettings(**asdict(replace(self.engine_settings(), mock_role=PD)), pool=pool)

    def cachepool_settings(self) -> CachePoolSettings:
        return CachePoolSettings(backend=self.pool_backend)

    def router_settings(self, link_gbps: float, backends: RouterBackends) -> RouterSettings:
        """The router in front of `backends`, over a link of `link_gbps`."""
        return RouterSettings(
            model=self.model,
            policy=self.policy,
            link_gbps=link_gbps,
            replan_period_s=self.replan_period_s,
            threshold_tokens=self.threshold_tokens,
            block_size=self.block_size,
            max_model_len=self.max_model_len,
            pd_prefill_workers=self.pd_prefill_workers,
            http_port=self.http_port,
            **asdict(backends),
        )
