"""The inter-cluster link: processor sharing among concurrent transfers, a FIFO queue in front, and a
measured utilisation (§3.1 network tier 2, §3.4.3 "egress utilisation").

**Sharing.** Up to ``max_flows`` transfers share the capacity max-min fairly (water-filling): a flow that is
capped below the fair share keeps its cap and the rest is split evenly among the others. Further transfers
wait in FIFO order.

**Layer-wise overlap (§3.3, Eq. 3).** A PrfaaS prefill produces its KV uniformly over the prefill time, so
while the prefill runs its flow is capped at the production rate ``S_kv / T_prefill`` and can never finish
before the prefill does; ``uncap`` lifts the cap when the prefill ends. (A flow that fell behind production
is still held to the production rate until then: a slightly conservative approximation.)

**Utilisation** is bytes actually sent over the last ``window_s`` divided by the capacity offered over it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from prfaas.sched.throughput import bytes_per_s_to_gbps, gbps_to_bytes_per_s
from prfaas.sim.events import EventQueue

_DONE_BYTES = 1.0  # float slack: a flow with under a byte left has been sent (1 byte < 1 ns at 100 Gbps)


class Flow:
    """One transfer; ``on_sent`` runs once its last byte is on the wire."""

    __slots__ = ("cap_bytes_per_s", "on_sent", "rate_bytes_per_s", "remaining_bytes")

    def __init__(self, size_bytes: float, cap_bytes_per_s: float | None, on_sent: Callable[[], None]) -> None:
        self.remaining_bytes = size_bytes
        self.cap_bytes_per_s = cap_bytes_per_s
        self.rate_bytes_per_s = 0.0
        self.on_sent = on_sent


def water_fill(flows: list[Flow], capacity_bytes_per_s: float) -> None:
    """Max-min fair rates: serve caps in increasing order while they are below the running fair share."""
    left, count = capacity_bytes_per_s, len(flows)
    capped = sorted((f for f in flows if f.cap_bytes_per_s is not None), key=lambda f: f.cap_bytes_per_s or 0.0)
    fixed: set[int] = set()
    for flow in capped:
        assert flow.cap_bytes_per_s is not None
        if flow.cap_bytes_per_s > left / count:
            break
        flow.rate_bytes_per_s = flow.cap_bytes_per_s
        left, count = left - flow.cap_bytes_per_s, count - 1
        fixed.add(id(flow))
    share = left / count if count else 0.0
    for flow in flows:
        if id(flow) not in fixed:
            flow.rate_bytes_per_s = share


class Link:
    """One direction of the PrfaaS <-> PD link."""

    def __init__(self, events: EventQueue, capacity_gbps: float, window_s: float, max_flows: int) -> None:
        self._events = events
        self.capacity_bytes_per_s = gbps_to_bytes_per_s(capacity_gbps)
        self.window_s = window_s
        self.max_flows = max_flows
        self.active: list[Flow] = []
        self.waiting: deque[Flow] = deque()
        self.sent_bytes = 0.0
        self._offered_bytes = 0.0
        self._rate_bytes_per_s = 0.0
        self._last_s = events.now_s
        self._timer = 0
        # (time, cumulative sent, cumulative offered, send rate, capacity) at every rate change
        self._marks: deque[tuple[float, float, float, float, float]] = deque()
        self._mark()

    @property
    def capacity_gbps(self) -> float:
        return bytes_per_s_to_gbps(self.capacity_bytes_per_s)

    def start(self, size_bytes: float, cap_bytes_per_s: float | None, on_sent: Callable[[], None]) -> Flow:
        """Begin a transfer now (or queue it when ``max_flows`` are active)."""
        flow = Flow(size_bytes, cap_bytes_per_s, on_sent)
        self._advance()
        if len(self.active) < self.max_flows:
            self.active.append(flow)
        else:
            self.waiting.append(flow)
        self._reallocate()
        return flow

    def uncap(self, flow: Flow) -> None:
        """The producer finished (the prefill ended): the flow may now use any share it gets."""
        self._advance()
        flow.cap_bytes_per_s = None
        self._reallocate()

    def set_capacity_gbps(self, gbps: float) -> None:
        self._advance()
        self.capacity_bytes_per_s = gbps_to_bytes_per_s(gbps)
        self._reallocate()

    def utilization(self) -> float:
        """Sent / offered bytes over the last ``window_s`` (shorter at the start of a run)."""
        now = self._events.now_s
        start = now - self.window_s
        marks = self._marks
        while len(marks) >= 2 and marks[1][0] <= start:
            marks.popleft()
        sent_now, offered_now = self._cumulative(marks[-1], now)
        sent_then, offered_then = self._cumulative(marks[0], max(start, marks[0][0]))
        offered = offered_now - offered_then
        return min((sent_now - sent_then) / offered, 1.0) if offered > 0 else 0.0

    @staticmethod
    def _cumulative(mark: tuple[float, float, float, float, float], at_s: float) -> tuple[float, float]:
        t, sent, offered, rate, capacity = mark
        return sent + rate * (at_s - t), offered + capacity * (at_s - t)

    def _advance(self) -> None:
        """Move every flow forward to now at its current rate."""
        now = self._events.now_s
        dt = now - self._last_s
        if dt > 0:
            for flow in self.active:
                flow.remaining_bytes -= flow.rate_bytes_per_s * dt
            self.sent_bytes += self._rate_bytes_per_s * dt
            self._offered_bytes += self.capacity_bytes_per_s * dt
            self._last_s = now

    def _reallocate(self) -> None:
        """Retire finished flows, admit queued ones, re-share the capacity, and arm the next-finish timer."""
        finished = [f for f in self.active if f.remaining_bytes <= _DONE_BYTES]
        if finished:
            self.active = [f for f in self.active if f.remaining_bytes > _DONE_BYTES]
        while self.waiting and len(self.active) < self.max_flows:
            self.active.append(self.waiting.popleft())
        water_fill(self.active, self.capacity_bytes_per_s)
        self._rate_bytes_per_s = sum(f.rate_bytes_per_s for f in self.active)
        self._mark()
        self._arm()
        for flow in finished:
            flow.on_sent()

    def _mark(self) -> None:
        now = self._events.now_s
        self._marks.append(
            (now, self.sent_bytes, self._offered_bytes, self._rate_bytes_per_s, self.capacity_bytes_per_s)
        )

    def _arm(self) -> None:
        self._timer += 1
        times = [f.remaining_bytes / f.rate_bytes_per_s for f in self.active if f.rate_bytes_per_s > 0]
        if times:
            self._events.schedule(self._events.now_s + min(times), self._on_timer, self._timer)

    def _on_timer(self, timer: int) -> None:
        if timer == self._timer:  # otherwise the rates changed since it was armed
            self._advance()
            self._reallocate()
