"""Routing policies behind one interface (§3.3, §3.4.3), selectable by name from ``POLICIES``.

``route`` is the short timescale (per request: PrfaaS or local PD-P, from the cached prefixes and the measured
cluster state); ``update`` the long one (per period: re-run the §3.4.2 grid search on recent incremental
lengths and the measured bandwidth, resetting ``t`` and recommending an ``N_p``/``N_d`` split). The router
service and the simulator drive the same objects.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Protocol

from prfaas.sched.planner import search, threshold_grid, threshold_sweep
from prfaas.sched.profile import HardwareProfile
from prfaas.sched.routing import PD, PRFAAS
from prfaas.sched.scenario import Scenario
from prfaas.sched.workload import EmpiricalLengths


@dataclass(frozen=True, slots=True)
class RequestView:
    """What the router knows about one request: its length and the prefix each cluster has cached."""

    prompt_tokens: int
    cached_pd_tokens: int = 0
    cached_prfaas_tokens: int = 0


@dataclass(frozen=True, slots=True)
class ClusterState:
    """Measured state at routing time. ``egress_utilization`` = bytes/s actually sent over the PrfaaS->PD link
    divided by its capacity, over a recent window, in [0, 1]. A queue depth counts the requests a path holds:
    waiting, in prefill, or (PrfaaS) with KV still on the link, so link congestion shows up as PrfaaS queueing.
    ``pd_queue_limit`` None means the local side is never considered congested."""

    prfaas_available: bool
    egress_utilization: float
    link_gbps: float
    prfaas_queue_depth: int
    prfaas_queue_limit: int
    pd_queue_depth: int
    n_prefill: int
    n_decode: int
    pd_queue_limit: int | None = None

    @property
    def prfaas_load(self) -> float:
        return self.prfaas_queue_depth / max(self.prfaas_queue_limit, 1)

    @property
    def pd_load(self) -> float:
        return 0.0 if self.pd_queue_limit is None else self.pd_queue_depth / max(self.pd_queue_limit, 1)


@dataclass(frozen=True, slots=True)
class Decision:
    """Where to prefill and why. ``incremental_tokens`` is what the chosen cluster computes; ``cache_cluster``
    names the cluster whose cached prefix it counts on (None: no cache); ``move_prefix`` asks for that prefix
    to be copied across the link first because the computing cluster does not hold it (§3.4.3)."""

    route: str
    reason: str
    incremental_tokens: int
    threshold_tokens: float
    move_prefix: bool = False
    cache_cluster: str | None = None


@dataclass(frozen=True, slots=True)
class Split:
    """A PD cluster role assignment: ``N_p`` prefill and ``N_d`` decode instances."""

    n_prefill: int
    n_decode: int


@dataclass(frozen=True, slots=True)
class PeriodObservation:
    """What the long timescale sees at the end of a period: length samples (uncached after prefix matching,
    and whole prompts), the measured link bandwidth, the instance counts and the fitted profiles."""

    incremental_tokens: tuple[float, ...]
    prompt_tokens: tuple[float, ...]
    link_gbps: float
    n_prfaas: int
    n_prefill: int
    n_decode: int
    output_tokens: float
    prfaas_profile: HardwareProfile
    pd_profile: HardwareProfile

    def scenario(self, lengths: EmpiricalLengths) -> Scenario:
        """The planner's inputs for this period, with ``lengths`` as the uncached-length law."""
        num_pd = self.n_prefill + self.n_decode
        pd, prfaas = self.pd_profile, self.prfaas_profile
        return Scenario(prfaas, pd, self.n_prfaas, num_pd, self.link_gbps, self.output_tokens, lengths)


class RoutingPolicy(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def threshold_tokens(self) -> float: ...  # the effective t now; inf never offloads, -inf always does

    @property
    def recommended_split(self) -> Split | None: ...

    def route(self, req: RequestView, state: ClusterState) -> Decision: ...

    def update(self, observation: PeriodObservation) -> None: ...


@dataclass(frozen=True, slots=True)
class AdaptiveSettings:
    """Knobs of the dual-timescale policy (§3.4.3 gives no numbers; these are ours).

    - Mode: bandwidth is *scarce* above ``scarce_above`` egress utilisation, *abundant* below ``abundant_below``;
      in between the previous mode holds (hysteresis, so the rule does not flap).
    - ``t`` moves per decision: x ``raise_factor`` (up to ``max_multiplier``) when the link is *hot* (utilisation
      >= ``pressure_utilization`` although the plan expected less) and PD is below its queue limit, or when the
      PrfaaS queue is at its limit while PD has headroom (load < ``headroom_load``); / ``raise_factor`` (down to
      ``min_multiplier``) when PD is at its limit while PrfaaS has headroom and the link is not hot; a hot link
      with PD full holds ``t``; otherwise the multiplier decays toward 1 by ``decay``.
    - Overload: at ``overload_factor`` x its queue limit, with PD having headroom, PrfaaS gets no new work.
    - Re-planning: grid step ``replan_step_tokens``, over the last ``history_samples`` lengths; a new PD split
      only for a ``resplit_gain`` predicted gain.
    """

    scarce_above: float = 0.7
    abundant_below: float = 0.3
    pressure_utilization: float = 0.9
    raise_factor: float = 1.05
    max_multiplier: float = 4.0
    min_multiplier: float = 0.5
    decay: float = 0.9
    overload_factor: float = 2.0
    headroom_load: float = 0.5
    replan_step_tokens: int = 500
    resplit_gain: float = 0.05
    history_samples: int = 2000


def scarce_rule(req: RequestView, t: float) -> Decision:
    """Bandwidth scarce (§3.4.3): each cluster's cache on its own. ``l = l_total - l_pd`` (what PD would
    compute, and what PrfaaS must send back); ``l > t`` -> PrfaaS, recomputing from its own cache."""
    incremental = req.prompt_tokens - req.cached_pd_tokens
    if incremental > t:
        remote = req.prompt_tokens - req.cached_prfaas_tokens
        return Decision(PRFAAS, f"scarce: l={incremental} > t={t:.0f}", remote, t, cache_cluster=PRFAAS)
    return Decision(PD, f"scarce: l={incremental} <= t={t:.0f}", incremental, t, cache_cluster=PD)


def abundant_rule(req: RequestView, t: float) -> Decision:
    """Bandwidth abundant (§3.4.3): compute is scarce, so use the longer prefix wherever it is:
    ``l_prefix = max(l_prfaas, l_pd)``, ``l = l_total - l_prefix``; ``l > t`` -> PrfaaS. When the holder of the
    longer prefix is not the computing cluster, the prefix crosses the link first (``move_prefix``)."""
    holder = PRFAAS if req.cached_prfaas_tokens > req.cached_pd_tokens else PD
    incremental = req.prompt_tokens - max(req.cached_prfaas_tokens, req.cached_pd_tokens)
    route = PRFAAS if incremental > t else PD
    move = route != holder and req.cached_prfaas_tokens != req.cached_pd_tokens
    sign = ">" if route == PRFAAS else "<="
    reason = f"abundant: l={incremental} {sign} t={t:.0f}" + (f", prefix moves from {holder}" if move else "")
    return Decision(route, reason, incremental, t, move_prefix=move, cache_cluster=holder)


Rule = Callable[[RequestView, float], Decision]
BANDWIDTH_RULES: dict[str, Rule] = {"scarce": scarce_rule, "abundant": abundant_rule}


def _unavailable(req: RequestView, t: float, why: str) -> Decision:
    return Decision(PD, why, req.prompt_tokens - req.cached_pd_tokens, t, cache_cluster=PD)


class AdaptivePolicy:
    """The dual-timescale policy of §3.4.3 (``prfaas``) and its ablations: ``prfaas-no-cache`` (lengths are whole
    prompts, in routing and re-planning), ``prfaas-no-short`` (the scarce rule at the re-planned ``t``, nothing
    else) and ``prfaas-static-t`` (the scarce rule at a fixed ``t``; local only when PrfaaS is unavailable)."""

    def __init__(
        self,
        threshold_tokens: float,
        split: Split | None = None,
        settings: AdaptiveSettings | None = None,
        *,
        name: str = "prfaas",
        cache_aware: bool = True,
        short_timescale: bool = True,
        long_timescale: bool = True,
    ) -> None:
        self.settings = settings or AdaptiveSettings()
        self.name, self.cache_aware = name, cache_aware
        self.short_timescale, self.long_timescale = short_timescale, long_timescale
        self.mode = "abundant" if short_timescale else "scarce"
        self.multiplier = 1.0
        self._planned_t = float(threshold_tokens)
        self._planned_utilization = 0.0  # the egress share the current plan expects (1.0: egress-bound plan)
        self.recommended_split = split
        self._history: deque[float] = deque(maxlen=self.settings.history_samples)

    @property
    def threshold_tokens(self) -> float:
        return self._planned_t * self.multiplier

    def route(self, req: RequestView, state: ClusterState) -> Decision:
        """Unavailable -> local; overloaded (PrfaaS queue >= ``overload_factor`` x limit, PD with headroom) -> local;
        otherwise the scarce or abundant rule of the current bandwidth mode at ``t = t_plan x multiplier``."""
        view = req if self.cache_aware else RequestView(req.prompt_tokens)
        if self.short_timescale:
            self._observe(state)
        t = self.threshold_tokens
        if not state.prfaas_available:
            return _unavailable(view, t, "PrfaaS unavailable")
        s = self.settings
        if self.short_timescale and state.prfaas_load >= s.overload_factor and state.pd_load < s.headroom_load:
            return _unavailable(view, t, f"PrfaaS overloaded: queue {state.prfaas_queue_depth}")
        decision = BANDWIDTH_RULES[self.mode](view, t)
        return decision if self.cache_aware else dataclasses.replace(decision, cache_cluster=None)

    def _observe(self, state: ClusterState) -> None:
        """Short timescale (§3.4.3): the bandwidth mode, then ``t`` as ``AdaptiveSettings`` says. Load only moves to a
        side with room: onto a full side it just moves the queue (and long prompts run ~2.7x slower on PD-P)."""
        s, util = self.settings, state.egress_utilization
        if util > s.scarce_above:
            self.mode = "scarce"
        elif util < s.abundant_below:
            self.mode = "abundant"
        link_hot = util >= s.pressure_utilization > self._planned_utilization
        prfaas_pressure = state.prfaas_load >= 1.0 and state.pd_load < s.headroom_load
        pd_pressure = state.pd_load >= 1.0 and state.prfaas_load < s.headroom_load
        if (link_hot and state.pd_load < 1.0) or prfaas_pressure:
            self.multiplier = min(self.multiplier * s.raise_factor, s.max_multiplier)
        elif pd_pressure and not link_hot:
            self.multiplier = max(self.multiplier / s.raise_factor, s.min_multiplier)
        elif not link_hot:  # a hot link with PD full holds t: neither side can take more
            self.multiplier = 1.0 + (self.multiplier - 1.0) * s.decay

    def update(self, observation: PeriodObservation) -> None:
        """Long timescale (§3.4.3): re-run the §3.4.2 grid search on recent incremental lengths (cache-blind: prompt
        lengths) at the measured bandwidth, resetting ``t`` and the split. A new split (role changes) must beat the
        best ``t`` at the current split by ``resplit_gain`` in ``Lambda_max``, or near-ties flip roles every period."""
        s = self.settings
        if not self.long_timescale:
            return
        self._history.extend(observation.incremental_tokens if self.cache_aware else observation.prompt_tokens)
        if not self._history or observation.link_gbps <= 0:
            return
        scenario = observation.scenario(EmpiricalLengths.of(self._history))
        best = search(scenario, s.replan_step_tokens)
        if best.n_prefill != observation.n_prefill and observation.n_prefill + observation.n_decode > 1:
            grid = threshold_grid(scenario, s.replan_step_tokens)
            keep = max(threshold_sweep(scenario, observation.n_prefill, grid), key=lambda p: p.throughput_rps)
            best = best if best.throughput_rps > (1 + s.resplit_gain) * keep.throughput_rps else keep
        self._planned_t = best.split.threshold_tokens
        self._planned_utilization = best.egress_gbps / observation.link_gbps
        self.recommended_split = Split(best.n_prefill, best.n_decode)


class FixedRoutePolicy:
    """``homogeneous`` (always local: no PrfaaS cluster, ``t = inf``) and ``naive`` (every prefill remote,
    ``t = -inf``, no length routing) baselines of §4.1. Positional factory arguments are ignored."""

    def __init__(self, *_: object, name: str, route_to: str) -> None:
        self.name, self._route = name, route_to
        self.threshold_tokens = math.inf if route_to == PD else -math.inf
        self.recommended_split: Split | None = None

    def route(self, req: RequestView, state: ClusterState) -> Decision:
        cached = req.cached_pd_tokens if self._route == PD else req.cached_prfaas_tokens
        reason, t = f"{self.name}: always {self._route}", self.threshold_tokens
        return Decision(self._route, reason, req.prompt_tokens - cached, t, cache_cluster=self._route)

    def update(self, observation: PeriodObservation) -> None:
        return None


POLICIES: dict[str, Callable[..., RoutingPolicy]] = {
    "prfaas": partial(AdaptivePolicy, name="prfaas"),
    "prfaas-static-t": partial(AdaptivePolicy, name="prfaas-static-t", short_timescale=False, long_timescale=False),
    "prfaas-no-cache": partial(AdaptivePolicy, name="prfaas-no-cache", cache_aware=False),
    "prfaas-no-short": partial(AdaptivePolicy, name="prfaas-no-short", short_timescale=False),
    "homogeneous": partial(FixedRoutePolicy, name="homogeneous", route_to=PD),
    "naive": partial(FixedRoutePolicy, name="naive", route_to=PRFAAS),
}


def make_policy(
    name: str, threshold_tokens: float, split: Split | None = None, settings: AdaptiveSettings | None = None
) -> RoutingPolicy:
    """Build a registered policy by name (``ValueError`` naming the choices if there is none)."""
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; choose from {', '.join(POLICIES)}")
    return POLICIES[name](threshold_tokens, split, settings)
