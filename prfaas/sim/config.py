"""Simulator configuration (parsed once at the edge) and the deployment each policy runs on (§4.1)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from prfaas.sched.planner import OperatingPoint, homogeneous_baseline
from prfaas.sched.policy import Split
from prfaas.sched.profile import HardwareProfile
from prfaas.sched.scenario import Scenario


@dataclass(frozen=True, slots=True)
class LinkEvent:
    """At ``at_s`` the PrfaaS <-> PD link capacity becomes ``gbps`` (both directions)."""

    at_s: float
    gbps: float


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Run length and measurement. Throughput counts completions in ``[warmup_s, duration_s)``; latency covers
    requests arriving in that window. Arrivals stop at ``duration_s``; the run then drains for up to
    ``drain_s`` more. The policy's long timescale runs every ``update_period_s``; queue limits are
    ``queue_limit_per_instance`` x instances; egress utilisation is measured over ``utilization_window_s``."""

    duration_s: float = 600.0
    warmup_s: float = 60.0
    drain_s: float = 1800.0
    seed: int = 0
    sample_interval_s: float = 1.0
    utilization_window_s: float = 5.0
    update_period_s: float = 60.0
    queue_limit_per_instance: float = 2.0
    max_link_flows: int = 64
    cache_capacity_blocks: int = 200_000
    block_tokens: int = 512
    link_events: tuple[LinkEvent, ...] = ()

    def __post_init__(self) -> None:
        checks = (
            (self.duration_s > 0, f"duration_s must be > 0, got {self.duration_s}"),
            (0 <= self.warmup_s < self.duration_s, f"need 0 <= warmup_s < duration_s, got {self.warmup_s}"),
            (self.drain_s >= 0, f"drain_s must be >= 0, got {self.drain_s}"),
            (self.sample_interval_s > 0, f"sample_interval_s must be > 0, got {self.sample_interval_s}"),
            (self.utilization_window_s > 0, f"utilization_window_s must be > 0, got {self.utilization_window_s}"),
            (self.update_period_s > 0, f"update_period_s must be > 0, got {self.update_period_s}"),
            (self.max_link_flows >= 1, f"max_link_flows must be >= 1, got {self.max_link_flows}"),
            (self.cache_capacity_blocks >= 0, f"cache_capacity_blocks must be >= 0, got {self.cache_capacity_blocks}"),
            (all(e.gbps > 0 and e.at_s >= 0 for e in self.link_events), "link events need at_s >= 0 and gbps > 0"),
        )
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


@dataclass(frozen=True, slots=True)
class Deployment:
    """Hardware and instance counts: ``n_prfaas`` PrfaaS prefill instances and a PD cluster of
    ``split.n_prefill`` PD-P + ``split.n_decode`` PD-D instances."""

    prfaas_profile: HardwareProfile
    pd_profile: HardwareProfile
    n_prfaas: int
    split: Split
    link_gbps: float

    @property
    def decode_batch_size(self) -> int:
        """``BS_max`` rounded to whole sequences (19.968 -> 20 for the paper's H20: +0.16% decode capacity)."""
        assert self.pd_profile.decode is not None
        return max(1, round(self.pd_profile.decode.max_batch_size))

    @property
    def decode_step_s(self) -> float:
        assert self.pd_profile.decode is not None
        return self.pd_profile.decode.step_s


def prfaas_pd(scenario: Scenario, best: OperatingPoint) -> Deployment:
    """PrfaaS-PD: ``num_prfaas`` PrfaaS instances, the PD cluster split as the §3.4.2 grid search says."""
    split = Split(best.n_prefill, best.n_decode)
    return Deployment(scenario.prfaas, scenario.pd, scenario.num_prfaas, split, scenario.link_gbps)


def homogeneous(scenario: Scenario, best: OperatingPoint) -> Deployment:
    """Homogeneous PD (§4.1): every instance is PD hardware (4 + 8 = 12 H20), best prefill/decode split."""
    best = homogeneous_baseline(scenario)
    return Deployment(scenario.prfaas, scenario.pd, 0, Split(best.n_prefill, best.n_decode), scenario.link_gbps)


def naive(scenario: Scenario, best: OperatingPoint) -> Deployment:
    """Naive heterogeneous PD (§4.1): all prefill on the PrfaaS instances, the whole PD cluster decodes."""
    return Deployment(scenario.prfaas, scenario.pd, scenario.num_prfaas, Split(0, scenario.num_pd), scenario.link_gbps)


DEPLOYMENTS: dict[str, Callable[[Scenario, OperatingPoint], Deployment]] = {"homogeneous": homogeneous, "naive": naive}
"""Policies that need their own topology; every other policy runs on ``prfaas_pd``."""


def deployment_for(policy_name: str, scenario: Scenario, best: OperatingPoint) -> Deployment:
    """``best`` is the PrfaaS-PD optimum of ``scenario`` (``planner.search``)."""
    return DEPLOYMENTS.get(policy_name, prfaas_pd)(scenario, best)
