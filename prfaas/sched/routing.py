"""Per-request routing: which cluster prefills a request, and which decode worker receives it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

PRFAAS = "prfaas"
LOCAL = "local"


@dataclass(frozen=True, slots=True)
class RouteDecision:
    route: str  # PRFAAS or LOCAL
    reason: str
    prompt_tokens: int
    cached_pd_tokens: int
    cached_prfaas_tokens: int
    incremental_tokens: int  # l: what the PD cluster would have to compute
    threshold_tokens: int


def route_by_threshold(
    prompt_tokens: int,
    cached_pd_tokens: int,
    cached_prfaas_tokens: int,
    threshold_tokens: int,
    prfaas_available: bool = True,
    local_available: bool = True,
) -> RouteDecision:
    """Selective offloading (paper §3.3, bandwidth-scarce rule of §3.4.3).

    l = prompt length minus the prefix the local PD cluster already caches. Only requests with
    l > t go to the PrfaaS cluster (which recomputes from its own cache); short ones stay local,
    where they would waste both the compute-dense chips and the cross-datacenter link.
    """
    incremental = prompt_tokens - cached_pd_tokens
    if not prfaas_available:
        route, reason = LOCAL, "no PrfaaS prefill worker available"
    elif not local_available:
        route, reason = PRFAAS, "no local prefill worker available"
    elif incremental > threshold_tokens:
        route, reason = PRFAAS, f"incremental {incremental} > t={threshold_tokens}"
    else:
        route, reason = LOCAL, f"incremental {incremental} <= t={threshold_tokens}"
    return RouteDecision(
        route, reason, prompt_tokens, cached_pd_tokens, cached_prfaas_tokens, incremental, threshold_tokens
    )


@dataclass(frozen=True, slots=True)
class WorkerView:
    address: str
    active: int  # queue depth or running sequences
    cached_tokens: int = 0


def pick_worker(workers: Sequence[WorkerView], cache_affine: bool) -> WorkerView:
    """Least loaded; with `cache_affine`, prefer the longest cached prefix first (then least loaded)."""
    if not workers:
        raise ValueError("no workers to choose from")
    if cache_affine:
        return min(workers, key=lambda w: (-w.cached_tokens, w.active, w.address))
    return min(workers, key=lambda w: (w.active, w.address))
