"""Measured PrfaaS egress: bytes actually sent over the cross-datacenter link per second.

Each finished transfer contributes its bytes spread evenly over the time it was on the wire; the
rate is what falls inside a sliding window. Utilization divides that by the link's capacity.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable


class EgressMeter:
    def __init__(self, capacity_gbps: float, window_s: float = 5.0, clock: Callable[[], float] = time.monotonic):
        if capacity_gbps <= 0 or window_s <= 0:
            raise ValueError("capacity_gbps and window_s must be positive")
        self.capacity_gbps = capacity_gbps
        self.window_s = window_s
        self._clock = clock
        self._transfers: deque[tuple[float, float, int]] = deque()  # (start, end, bytes)
        self.total_bytes = 0

    def record(self, num_bytes: int, duration_s: float) -> None:
        end = self._clock()
        self._transfers.append((end - max(duration_s, 1e-6), end, num_bytes))
        self.total_bytes += num_bytes

    def rate_gbps(self) -> float:
        now = self._clock()
        lo = now - self.window_s
        while self._transfers and self._transfers[0][1] < lo:
            self._transfers.popleft()
        sent = sum(b * _overlap(s, e, lo, now) / (e - s) for s, e, b in self._transfers)
        return sent * 8 / self.window_s / 1e9

    def utilization(self) -> float:
        return min(1.0, self.rate_gbps() / self.capacity_gbps)


def _overlap(start: float, end: float, lo: float, hi: float) -> float:
    return max(0.0, min(end, hi) - max(start, lo))
