"""What a run measured: throughput in the measurement window, TTFT/TPOT, offload, link use, over time."""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import fmean

import numpy as np

from prfaas.sched.policy import PRFAAS, Split
from prfaas.sim.control import Sample
from prfaas.sim.instances import SimRequest
from prfaas.sim.simulator import Simulator


@dataclass(frozen=True, slots=True)
class LatencyStats:
    count: int
    mean_s: float
    p50_s: float
    p90_s: float
    p99_s: float

    @classmethod
    def of(cls, values_s: list[float]) -> LatencyStats:
        if not values_s:
            return cls(0, math.nan, math.nan, math.nan, math.nan)
        p50, p90, p99 = np.percentile(values_s, [50, 90, 99]).tolist()
        return cls(len(values_s), fmean(values_s), p50, p90, p99)


@dataclass(frozen=True, slots=True)
class SimResult:
    """One policy's run. Window quantities cover ``[warmup_s, duration_s)``: throughput counts completions in
    it; latencies, offload and cache hits cover the requests that arrived in it."""

    policy: str
    deployment: str
    throughput_rps: float
    arrived: int
    completed: int
    unfinished: int
    ttft: LatencyStats
    tpot_mean_ms: float
    offload_fraction: float
    prefix_hit_fraction: float
    prefix_moves: int
    mean_egress_gbps: float
    final_threshold_tokens: float
    final_split: Split
    events: int
    wall_s: float
    ttft_values_s: tuple[float, ...]
    samples: tuple[Sample, ...]

    @property
    def events_per_s(self) -> float:
        return self.events / self.wall_s if self.wall_s > 0 else math.inf

    def summary(self) -> dict[str, object]:
        """JSON-ready: the keys of ``prfaas simulate --json`` (infinite thresholds become null)."""
        t = self.final_threshold_tokens
        return {
            "policy": self.policy,
            "deployment": self.deployment,
            "throughput_rps": self.throughput_rps,
            "arrived": self.arrived,
            "completed": self.completed,
            "unfinished": self.unfinished,
            "ttft_mean_s": self.ttft.mean_s,
            "ttft_p50_s": self.ttft.p50_s,
            "ttft_p90_s": self.ttft.p90_s,
            "ttft_p99_s": self.ttft.p99_s,
            "tpot_mean_ms": self.tpot_mean_ms,
            "offload_fraction": self.offload_fraction,
            "prefix_hit_fraction": self.prefix_hit_fraction,
            "prefix_moves": self.prefix_moves,
            "mean_egress_gbps": self.mean_egress_gbps,
            "final_threshold_tokens": t if math.isfinite(t) else None,
            "final_split": [self.final_split.n_prefill, self.final_split.n_decode],
            "events": self.events,
            "events_per_s": self.events_per_s,
            "series": self.series(),
        }

    def series(self) -> dict[str, list[float | None]]:
        """Link utilisation, capacity and ``t`` over time (one point per sample)."""
        return {
            "time_s": [s.time_s for s in self.samples],
            "egress_utilization": [s.egress_utilization for s in self.samples],
            "link_gbps": [s.link_gbps for s in self.samples],
            "threshold_tokens": [
                s.threshold_tokens if math.isfinite(s.threshold_tokens) else None for s in self.samples
            ],
        }


def summarize(sim: Simulator, wall_s: float) -> SimResult:
    config = sim.config
    lo, hi = config.warmup_s, config.duration_s
    window = [r for r in sim.requests if lo <= r.arrival_s < hi]
    completed = sum(1 for r in sim.requests if lo <= r.finish_s < hi)
    served = [r for r in window if not math.isnan(r.finish_s)]
    samples = [s for s in sim.control.samples if lo <= s.time_s < hi]
    dep = sim.deployment
    return SimResult(
        policy=sim.policy.name,
        deployment=f"{dep.n_prfaas}/{dep.split.n_prefill}/{dep.split.n_decode}",
        throughput_rps=completed / (hi - lo),
        arrived=len(window),
        completed=completed,
        unfinished=len(window) - len(served),
        ttft=LatencyStats.of([r.ttft_s for r in window if not math.isnan(r.first_token_s)]),
        tpot_mean_ms=1000 * fmean(r.tpot_s for r in served) if served else math.nan,
        offload_fraction=_share(window, PRFAAS),
        prefix_hit_fraction=_hit_fraction(window),
        prefix_moves=sum(1 for r in window if r.moved_tokens > 0),
        mean_egress_gbps=fmean(s.egress_utilization * s.link_gbps for s in samples) if samples else 0.0,
        final_threshold_tokens=sim.policy.threshold_tokens,
        final_split=sim.instance_counts().split,
        events=sim.events.processed,
        wall_s=wall_s,
        ttft_values_s=tuple(r.ttft_s for r in window if not math.isnan(r.first_token_s)),
        samples=tuple(sim.control.samples),
    )


def _share(requests: list[SimRequest], route: str) -> float:
    return sum(1 for r in requests if r.route == route) / len(requests) if requests else math.nan


def _hit_fraction(requests: list[SimRequest]) -> float:
    """Prompt tokens served from a prefix cache over all prompt tokens prefilled."""
    started = [r for r in requests if not math.isnan(r.prefill_start_s)]
    total = sum(r.prompt_tokens for r in started)
    return sum(r.prompt_tokens - r.computed_tokens for r in started) / total if total else math.nan
