"""Measured PrfaaS egress: bytes actually sent over the cross-datacenter link per second, and what the link can
carry right now.

Each finished transfer contributes its bytes spread evenly over the time it was on the wire; the rate is what
falls inside a sliding window. Utilization divides that by the link's capacity.

The capacity is the configured one until the link shows it is the bottleneck: with layer-wise streaming a
transfer's *tail* (the time it still runs after the prefill compute ended) is a few round trips on a link with
room, and grows when KV queues on the link. When the median tail of the window's transfers exceeds
``max(LINK_BOUND_TAIL_S, LINK_BOUND_TAIL_FRACTION x median compute)``, the link was busy all along, so the rate it
delivered is what it can carry: the estimate drops to it. Once tails are short again the estimate probes upward
(x ``PROBE_FACTOR`` per window, never above the configured capacity); a link that is still slow shows long tails
again and is re-measured. Bandwidth that falls mid-run (a cut, a competing flow) thus reaches the routing policy
and the planner within about one window.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from collections.abc import Callable

LINK_BOUND_TAIL_S = 0.05
LINK_BOUND_TAIL_FRACTION = 0.25
MIN_TRANSFERS = 3  # transfers in the window before the tails say anything
PROBE_FACTOR = 1.25


class EgressMeter:
    def __init__(self, capacity_gbps: float, window_s: float = 5.0, clock: Callable[[], float] = time.monotonic):
        if capacity_gbps <= 0 or window_s <= 0:
            raise ValueError("capacity_gbps and window_s must be positive")
        self.configured_gbps = capacity_gbps
        self.window_s = window_s
        self._clock = clock
        self._transfers: deque[tuple[float, float, int, float, float]] = deque()  # (start, end, bytes, tail, compute)
        self._estimate_gbps = capacity_gbps
        self._next_review = clock() + window_s
        self.total_bytes = 0

    def record(self, num_bytes: int, duration_s: float, tail_s: float = 0.0, compute_s: float = 0.0) -> None:
        """A finished transfer: `duration_s` on the wire, of which `tail_s` after its prefill's `compute_s`."""
        end = self._clock()
        self._transfers.append((end - max(duration_s, 1e-6), end, num_bytes, max(tail_s, 0.0), max(compute_s, 0.0)))
        self.total_bytes += num_bytes

    def rate_gbps(self) -> float:
        now = self._clock()
        lo = now - self.window_s
        self._expire(lo)
        sent = sum(b * _overlap(s, e, lo, now) / (e - s) for s, e, b, _, _ in self._transfers)
        return sent * 8 / self.window_s / 1e9

    def capacity_gbps(self) -> float:
        """What the link carries now: the configured capacity, or the measured rate while the link is the
        bottleneck (module docstring). Reviewed at most once per window."""
        now = self._clock()
        if now >= self._next_review:
            self._next_review = now + self.window_s
            self._review()
        return self._estimate_gbps

    def link_bound(self) -> bool:
        """True when the window's transfers spent long after their prefill on the wire."""
        self._expire(self._clock() - self.window_s)
        if len(self._transfers) < MIN_TRANSFERS:
            return False
        tail = statistics.median(t[3] for t in self._transfers)
        compute = statistics.median(t[4] for t in self._transfers)
        return tail > max(LINK_BOUND_TAIL_S, LINK_BOUND_TAIL_FRACTION * compute)

    def utilization(self) -> float:
        return min(1.0, self.rate_gbps() / self.capacity_gbps())

    def _review(self) -> None:
        if self.link_bound():
            self._estimate_gbps = min(self.configured_gbps, max(self.rate_gbps(), 1e-6))
        else:
            self._estimate_gbps = min(self.configured_gbps, self._estimate_gbps * PROBE_FACTOR)

    def _expire(self, lo: float) -> None:
        while self._transfers and self._transfers[0][1] < lo:
            self._transfers.popleft()


def _overlap(start: float, end: float, lo: float, hi: float) -> float:
    return max(0.0, min(end, hi) - max(start, lo))
