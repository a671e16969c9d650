"""The core of a source's state stream, without an event loop: sequence numbers, subscriptions with
bounded queues, and the load-report throttle (the rules are in docs/state-streams.md).

- Every message carries the source's `instance_id` (new for every stream, i.e. every process) and its
  `seq`. `seq` counts the deltas and load reports published; a subscription starts with a snapshot
  stamped with the `seq` it subscribed at, then gets every later message, each one more than the last.
- A snapshot reflects at least every message up to its `seq` and perhaps some after it (it is taken
  once the subscription already queues): deltas are set operations, so applying one again changes
  nothing.
- A subscription queues at most `max_queued` messages. On overflow its queue is dropped and it is owed
  a fresh snapshot stamped with the overflowing message's `seq`; later messages queue behind it. The
  source's memory stays bounded whatever a subscriber does, and the subscriber sees a jump and a
  snapshot, which it handles as a resync.
"""

from __future__ import annotations

import math
import uuid
from collections import deque
from collections.abc import Callable

from prfaas.v1 import state_pb2

DEFAULT_MAX_QUEUED = 1024


class Subscription:
    """One subscriber: a snapshot owed (at a `seq`) and the messages after it."""

    def __init__(self, seq: int, max_queued: int, wake: Callable[[], None]) -> None:
        self.max_queued = max_queued
        self.events: deque[state_pb2.StateEvent] = deque()
        self.snapshot_seq: int | None = seq  # a snapshot owed, stamped with this seq
        self._wake = wake

    def push(self, event: state_pb2.StateEvent) -> None:
        if len(self.events) >= self.max_queued:
            self.events.clear()
            self.snapshot_seq = event.seq
        else:
            self.events.append(event)
        self._wake()

    def take_snapshot_seq(self) -> int | None:
        """The seq of the snapshot owed before anything queued, or None; the snapshot is then no longer owed."""
        seq, self.snapshot_seq = self.snapshot_seq, None
        return seq

    def pop(self) -> state_pb2.StateEvent | None:
        return self.events.popleft() if self.events else None

    def wake(self) -> None:
        self._wake()


class StateStream:
    def __init__(self, max_queued: int = DEFAULT_MAX_QUEUED, instance_id: str | None = None) -> None:
        if max_queued < 1:
            raise ValueError(f"max_queued must be >= 1, got {max_queued}")
        self.instance_id = instance_id or uuid.uuid4().hex
        self.seq = 0
        self.max_queued = max_queued
        self.closed = False
        self._subscriptions: list[Subscription] = []

    @property
    def subscribed(self) -> bool:
        return bool(self._subscriptions)

    def subscribe(self, wake: Callable[[], None]) -> Subscription:
        """A new subscriber, owed a snapshot at the current seq; `wake` is called whenever it has news."""
        sub = Subscription(self.seq, self.max_queued, wake)
        self._subscriptions.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscriptions.remove(sub)

    def publish(
        self, kv: state_pb2.KvDelta | None = None, load: state_pb2.LoadReport | None = None
    ) -> state_pb2.StateEvent | None:
        """Queue one message for every subscriber; with none, nothing is published (no seq is used)."""
        if not self._subscriptions:
            return None
        self.seq += 1
        event = state_pb2.StateEvent(instance_id=self.instance_id, seq=self.seq, kv=kv, load=load)
        for sub in self._subscriptions:
            sub.push(event)
        return event

    def snapshot_event(self, seq: int, snapshot: state_pb2.StateSnapshot) -> state_pb2.StateEvent:
        return state_pb2.StateEvent(instance_id=self.instance_id, seq=seq, snapshot=snapshot)

    def queued(self) -> list[int]:
        """Messages queued per subscriber."""
        return [len(sub.events) for sub in self._subscriptions]

    def close(self) -> None:
        """End every subscription (each is woken to notice)."""
        self.closed = True
        for sub in self._subscriptions:
            sub.wake()


class LoadThrottle:
    """When to send load reports: at most one per `interval_s`, and a request made inside an interval is
    served at its end, so every change is reported within `interval_s`. A report equal to the last one
    sent is skipped, unless none went out for `heartbeat_s`: then it is the stream's heartbeat, by which a
    subscriber tells a silent (hung, cut off) source from an idle one."""

    def __init__(self, interval_s: float, heartbeat_s: float = math.inf) -> None:
        self.interval_s, self.heartbeat_s = interval_s, heartbeat_s
        self._sent_s = -math.inf
        self._published_s = -math.inf
        self._requested = False
        self._last: state_pb2.LoadReport | None = None

    def request(self, now_s: float) -> float | None:
        """Ask for a report: the delay after which to `flush`, or None when a flush is already due."""
        if self._requested:
            return None
        self._requested = True
        return max(0.0, self._sent_s + self.interval_s - now_s)

    def flush(self, now_s: float, report: state_pb2.LoadReport) -> state_pb2.LoadReport | None:
        """The report to send now, or None when it says nothing new."""
        self._requested, self._sent_s = False, now_s
        if report == self._last and now_s - self._published_s < self.heartbeat_s:
            return None
        self._last, self._published_s = report, now_s
        return report

    def forget(self) -> None:
        """The next report is sent even if equal to the last (a snapshot carried a newer load meanwhile)."""
        self._last = None
