"""The simulator's slow loop: sampling, the policy's long timescale, PD role changes, and link events.

Every ``update_period_s`` the controller hands the policy a ``PeriodObservation`` (the incremental lengths
routed in the period, the measured link bandwidth, the instance counts and the profiles) and applies the
split it recommends by converting PD instances between prefill and decode (§3.4.3 long timescale). An
instance being converted first drains: it takes no new work, its queued requests move to its peers, and it
switches role once its running work is done. A new recommendation waits until running conversions finish.
The controller sees and changes the simulation only through ``Simulation``.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import fmean
from typing import Any, Protocol

from prfaas.sched.policy import ClusterState, PeriodObservation, RoutingPolicy, Split
from prfaas.sim.config import Deployment, SimConfig
from prfaas.sim.events import Handler
from prfaas.sim.instances import SimRequest
from prfaas.sim.pools import InstanceCounts


class Simulation(Protocol):
    """What the controller sees of the simulator, and what it may change (``Simulator`` implements it)."""

    policy: RoutingPolicy
    config: SimConfig
    deployment: Deployment

    @property
    def now_s(self) -> float: ...

    @property
    def link_gbps(self) -> float: ...

    @property
    def converting(self) -> int: ...

    def schedule(self, at_s: float, handler: Handler, arg: Any = None) -> None: ...

    def cluster_state(self) -> ClusterState: ...

    def instance_counts(self) -> InstanceCounts: ...

    def set_link_gbps(self, gbps: float) -> None: ...

    def convert_decoders(self, count: int) -> None: ...

    def convert_prefills(self, count: int) -> None: ...


@dataclass(frozen=True, slots=True)
class LengthSample:
    """Lengths known before the run (yesterday's traffic): seeds the policy's first plan."""

    incremental_tokens: tuple[float, ...]
    prompt_tokens: tuple[float, ...]
    output_tokens: float


@dataclass(frozen=True, slots=True)
class Sample:
    """The measured state every ``sample_interval_s``."""

    time_s: float
    egress_utilization: float
    link_gbps: float
    threshold_tokens: float
    prfaas_queue: int
    pd_queue: int
    n_prefill: int
    n_decode: int


class Controller:
    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.samples: list[Sample] = []
        self.role_changes: list[tuple[float, Split]] = []
        self._incremental: list[float] = []
        self._prompts: list[float] = []
        self._outputs: list[float] = []
        self._output_tokens = 1.0

    def start(self, prior: LengthSample | None) -> None:
        sim, config = self.sim, self.sim.config
        if prior is not None:
            self._output_tokens = prior.output_tokens
            self._update(prior.incremental_tokens, prior.prompt_tokens)
        sim.schedule(0.0, self._tick)
        sim.schedule(config.update_period_s, self._period)
        for event in config.link_events:
            sim.schedule(event.at_s, sim.set_link_gbps, event.gbps)

    def on_routed(self, req: SimRequest) -> None:
        self._incremental.append(req.prompt_tokens - req.cached_pd_tokens)
        self._prompts.append(req.prompt_tokens)
        self._outputs.append(req.output_tokens)

    def on_roles_settled(self) -> None:
        """The last running conversion finished."""
        self.role_changes.append((self.sim.now_s, self.sim.instance_counts().split))

    def _tick(self, _: object = None) -> None:
        sim = self.sim
        state = sim.cluster_state()
        self.samples.append(
            Sample(
                sim.now_s,
                state.egress_utilization,
                state.link_gbps,
                sim.policy.threshold_tokens,
                state.prfaas_queue_depth,
                state.pd_queue_depth,
                state.n_prefill,
                state.n_decode,
            )
        )
        if sim.now_s + sim.config.sample_interval_s < sim.config.duration_s:
            sim.schedule(sim.now_s + sim.config.sample_interval_s, self._tick)

    def _period(self, _: object = None) -> None:
        if self._outputs:
            self._output_tokens = fmean(self._outputs)
        self._update(tuple(self._incremental), tuple(self._prompts))
        self._incremental, self._prompts, self._outputs = [], [], []
        sim = self.sim
        if sim.now_s + sim.config.update_period_s < sim.config.duration_s:
            sim.schedule(sim.now_s + sim.config.update_period_s, self._period)

    def _update(self, incremental: tuple[float, ...], prompts: tuple[float, ...]) -> None:
        sim, counts = self.sim, self.sim.instance_counts()
        observation = PeriodObservation(
            incremental_tokens=incremental,
            prompt_tokens=prompts,
            link_gbps=sim.link_gbps,
            n_prfaas=counts.n_prfaas,
            n_prefill=counts.n_prefill,
            n_decode=counts.n_decode,
            output_tokens=self._output_tokens,
            prfaas_profile=sim.deployment.prfaas_profile,
            pd_profile=sim.deployment.pd_profile,
        )
        sim.policy.update(observation)
        self.apply_split(sim.policy.recommended_split)

    # -- role changes -----------------------------------------------------------------------------------------
    def apply_split(self, split: Split | None) -> None:
        """Convert ``|N_p(target) - N_p|`` instances of the surplus role (the simulator drains the least loaded
        first); at least one instance of each role always keeps serving."""
        counts = self.sim.instance_counts()
        total = counts.n_prefill + counts.n_decode
        if split is None or self.sim.converting or total < 2 or not counts.n_prefill or not counts.n_decode:
            return
        delta = min(max(split.n_prefill, 1), total - 1) - counts.n_prefill
        if delta > 0:
            self.sim.convert_decoders(delta)
        elif delta < 0:
            self.sim.convert_prefills(-delta)
