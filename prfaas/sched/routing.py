"""Route names and the choice of a worker inside a cluster (the routing rules are in `policy.py`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

PRFAAS = "prfaas"
PD = "pd"  # the local PD cluster (clients see its route as "local": prefilled where it decodes)


@dataclass(frozen=True, slots=True)
class WorkerView:
    address: str
    active: int  # queue depth or running sequences
    cached_tokens: int = 0
    capacity: int = 0  # decode workers: sequences decoded at once (0: not reported)


def pick_worker(workers: Sequence[WorkerView], cache_affine: bool) -> WorkerView:
    """Least loaded; with `cache_affine`, prefer the longest cached prefix first (then least loaded)."""
    if not workers:
        raise ValueError("no workers to choose from")
    if cache_affine:
        return min(workers, key=lambda w: (-w.cached_tokens, w.active, w.address))
    return min(workers, key=lambda w: (w.active, w.address))
