"""The event queue of the discrete-event simulator: a binary heap of ``(time, seq, handler, arg)``.

``seq`` breaks ties, so events scheduled for the same instant run in the order they were scheduled
(FIFO), which keeps every run with the same seed identical.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any

Handler = Callable[[Any], None]


class EventQueue:
    """A simulated clock plus the events still to run. Handlers run at their time and may schedule more."""

    __slots__ = ("_heap", "_seq", "now_s", "processed")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Handler, Any]] = []
        self._seq = 0
        self.now_s = 0.0
        self.processed = 0

    def __len__(self) -> int:
        return len(self._heap)

    def schedule(self, at_s: float, handler: Handler, arg: Any = None) -> None:
        """Run ``handler(arg)`` at ``at_s`` (never earlier than now: the past cannot be changed)."""
        self._seq += 1
        heapq.heappush(self._heap, (max(at_s, self.now_s), self._seq, handler, arg))

    def run(self, until_s: float) -> None:
        """Process events in time order up to and including ``until_s``; the clock stops at the last one."""
        heap, pop = self._heap, heapq.heappop
        while heap and heap[0][0] <= until_s:
            at_s, _, handler, arg = pop(heap)
            self.now_s = at_s
            self.processed += 1
            handler(arg)
