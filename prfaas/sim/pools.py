"""Groups of instances of one role, with the dispatch rule for each (§3.1: the router picks a node too)."""

from __future__ import annotations

from dataclasses import dataclass

from prfaas.sched.policy import Split
from prfaas.sim.instances import DecodeInstance, PrefillInstance


@dataclass(frozen=True, slots=True)
class InstanceCounts:
    """Instances per role, those draining for a role change included."""

    n_prfaas: int  # PrfaaS prefill
    n_prefill: int  # PD prefill
    n_decode: int  # PD decode

    @property
    def split(self) -> Split:
        return Split(self.n_prefill, self.n_decode)


class PrefillPool:
    """The prefill instances of one cluster. ``outstanding`` counts requests queued, in prefill, or whose KV
    has not reached a decoder yet."""

    __slots__ = ("instances", "outstanding")

    def __init__(self, instances: list[PrefillInstance]) -> None:
        self.instances = instances
        self.outstanding = 0

    def serving(self) -> list[PrefillInstance]:
        """Instances that accept new work (not draining for a role change)."""
        return [i for i in self.instances if not i.draining]

    def pick(self, now_s: float) -> PrefillInstance:
        """Least estimated backlog first (join the shortest queue by work); ties to the lowest index.
        The cluster's prefix pool is shared by all its nodes, so cache affinity does not pick the node."""
        return min(self.serving(), key=lambda i: i.backlog_s(now_s))


class DecodePool:
    """The PD-D instances."""

    __slots__ = ("instances",)

    def __init__(self, instances: list[DecodeInstance]) -> None:
        self.instances = instances

    def serving(self) -> list[DecodeInstance]:
        return [i for i in self.instances if not i.draining]

    def pick(self) -> DecodeInstance:
        """Fewest sequences (running + waiting) first; ties to the lowest index."""
        return min(self.serving(), key=lambda i: i.load)
