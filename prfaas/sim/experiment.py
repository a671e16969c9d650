"""Run several policies on the same requests: build the workload once, then one deployment + policy per name.

Each policy starts from the planner's optimum for the scenario (§3.4.2): ``prfaas`` and ``prfaas-static-t``
run PrfaaS-PD at its ``t`` and ``N_p``/``N_d``; ``homogeneous`` and ``naive`` run their own topologies (§4.1).
Adaptive policies then re-plan from a prior length sample at time 0 and every period.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from prfaas.sched.planner import OperatingPoint, search
from prfaas.sched.policy import AdaptiveSettings, make_policy
from prfaas.sched.scenario import Scenario
from prfaas.sched.trace import load_mooncake_trace
from prfaas.sched.workload import TruncatedLogNormal
from prfaas.sim.arrivals import Arrival, RateStep, poisson_arrivals, rate_segments, trace_arrivals
from prfaas.sim.config import SimConfig, deployment_for
from prfaas.sim.control import LengthSample
from prfaas.sim.metrics import SimResult, summarize
from prfaas.sim.simulator import Simulator

DEFAULT_TRACE = Path("/work/shared/data/mooncake-traces/conversation_trace.jsonl")
PRIOR_SAMPLES = 2000


@dataclass(frozen=True, slots=True)
class WorkloadSpec:
    """``lognormal``: Poisson at ``rate_rps`` over the scenario's lengths; ``burst``: the same with rate
    ``steps`` (default: 2x the rate over the middle fifth of the run); ``mooncake``: replay ``trace_path``
    (``rate_rps`` rescales its clock; None keeps the recorded times)."""

    kind: str
    rate_rps: float | None = None
    steps: tuple[RateStep, ...] = ()
    trace_path: Path = DEFAULT_TRACE


@dataclass(frozen=True, slots=True)
class Workload:
    """The requests, the planning scenario (its lengths = the uncached-length law) and a prior sample."""

    arrivals: tuple[Arrival, ...]
    scenario: Scenario
    prior: LengthSample

    @property
    def span_s(self) -> float:
        """The last arrival time (0 without arrivals)."""
        return self.arrivals[-1].at_s if self.arrivals else 0.0


def _poisson(spec: WorkloadSpec, scenario: Scenario, seed: int, duration_s: float) -> Workload:
    if not isinstance(scenario.lengths, TruncatedLogNormal):
        raise ValueError("the lognormal and burst workloads need a log-normal length law (use --preset paper)")
    if spec.rate_rps is None or spec.rate_rps <= 0:
        raise ValueError(f"the {spec.kind} workload needs a rate > 0 req/s, got {spec.rate_rps}")
    if not math.isfinite(duration_s):
        raise ValueError(f"the {spec.kind} workload needs a finite duration")
    rng = np.random.default_rng(seed)
    segments = rate_segments(spec.rate_rps, spec.steps or _default_steps(spec, duration_s), duration_s)
    arrivals = poisson_arrivals(rng, scenario.lengths, round(scenario.output_tokens), segments)
    lengths = tuple(scenario.lengths.sample(np.random.default_rng(seed + 1), PRIOR_SAMPLES).tolist())
    return Workload(tuple(arrivals), scenario, LengthSample(lengths, lengths, scenario.output_tokens))


def _default_steps(spec: WorkloadSpec, duration_s: float) -> tuple[RateStep, ...]:
    if spec.kind != "burst" or spec.rate_rps is None:
        return ()
    d = duration_s
    return RateStep(0.4 * d, 2 * spec.rate_rps), RateStep(0.6 * d, spec.rate_rps)


def _mooncake(spec: WorkloadSpec, scenario: Scenario, seed: int, duration_s: float) -> Workload:
    """Plan on the trace's uncached lengths (an unbounded prefix cache, replayed in order) and its mean
    output; the simulator's bounded per-cluster caches decide the real hits."""
    trace = load_mooncake_trace(spec.trace_path)
    uncached, prompts = trace.uncached_lengths(), trace.input_lengths()
    planned = replace(scenario, lengths=uncached, output_tokens=trace.mean_output_tokens)
    pick = np.random.default_rng(seed + 1).permutation(len(prompts.lengths_tokens))[:PRIOR_SAMPLES]
    prior = LengthSample(
        tuple(uncached.lengths_tokens[i] for i in pick),
        tuple(prompts.lengths_tokens[i] for i in pick),
        trace.mean_output_tokens,
    )
    return Workload(tuple(trace_arrivals(trace, duration_s, spec.rate_rps)), planned, prior)


WORKLOADS: dict[str, Callable[[WorkloadSpec, Scenario, int, float], Workload]] = {
    "lognormal": _poisson,
    "burst": _poisson,
    "mooncake": _mooncake,
}


def build_workload(spec: WorkloadSpec, scenario: Scenario, seed: int, duration_s: float) -> Workload:
    """The arrivals in ``[0, duration_s)`` (a trace may end earlier: see ``Workload.span_s``)."""
    try:
        build = WORKLOADS[spec.kind]
    except KeyError:
        raise ValueError(f"unknown workload {spec.kind!r}; choose from {', '.join(WORKLOADS)}") from None
    return build(spec, scenario, seed, duration_s)


def run_policy(
    name: str,
    workload: Workload,
    config: SimConfig,
    settings: AdaptiveSettings | None = None,
    best: OperatingPoint | None = None,
) -> SimResult:
    """Simulate one policy on its deployment, starting at the planner's ``t`` (``best``, searched if None)."""
    scenario = workload.scenario
    best = search(scenario) if best is None else best
    deployment = deployment_for(name, scenario, best)
    policy = make_policy(name, best.split.threshold_tokens, deployment.split, settings)
    started = time.perf_counter()
    sim = Simulator(deployment, policy, workload.arrivals, config).run(workload.prior)
    return summarize(sim, time.perf_counter() - started)


def run_policies(
    names: Sequence[str], workload: Workload, config: SimConfig, settings: AdaptiveSettings | None = None
) -> dict[str, SimResult]:
    best = search(workload.scenario)
    return {name: run_policy(name, workload, config, settings, best) for name in names}
