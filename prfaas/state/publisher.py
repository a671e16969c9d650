"""A source's state stream on the event loop: `watch()` serves one subscriber (a `Watch` call), fed by
`publish_kv` (every change to what the source holds) and `report_load` (coalesced load reports)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable

from prfaas.kv.changes import KvDelta
from prfaas.state.stream import DEFAULT_MAX_QUEUED, LoadThrottle, StateStream
from prfaas.v1 import state_pb2

SnapshotSource = Callable[[], Awaitable[state_pb2.StateSnapshot]]  # what the source holds now (load aside)
LoadSource = Callable[[], state_pb2.LoadReport]  # part of the source's load now (sources are merged)
MIN_REPORT_INTERVAL_S = 0.2
REPORT_EVERY_S = 1.0


class StatePublisher:
    """Load reports are requested by the source whenever a count the router routes by changes (queue
    depth, registrations) and every `report_every_s` (free blocks, samples), and sent at most once per
    `min_report_interval_s` (`LoadThrottle`)."""

    def __init__(
        self,
        snapshot: SnapshotSource,
        *,
        max_queued: int = DEFAULT_MAX_QUEUED,
        min_report_interval_s: float = MIN_REPORT_INTERVAL_S,
        report_every_s: float = REPORT_EVERY_S,
        instance_id: str | None = None,
    ) -> None:
        self.stream = StateStream(max_queued, instance_id)
        self._snapshot = snapshot
        self._loads: list[LoadSource] = []
        self._throttle = LoadThrottle(min_report_interval_s, heartbeat_s=report_every_s)
        self._report_every_s = report_every_s
        self._flush: asyncio.TimerHandle | None = None
        self._tick: asyncio.TimerHandle | None = None

    @property
    def instance_id(self) -> str:
        return self.stream.instance_id

    def add_load(self, source: LoadSource) -> None:
        """Add a part of the load (a PD worker's two roles each report theirs)."""
        self._loads.append(source)

    def load(self) -> state_pb2.LoadReport:
        report = state_pb2.LoadReport()
        for source in self._loads:
            report.MergeFrom(source())
        return report

    def publish_kv(self, delta: KvDelta) -> None:
        if self.stream.subscribed:
            self.stream.publish(kv=kv_delta_pb(delta))

    def report_load(self) -> None:
        """Ask for a load report: sent now, or at the end of the current interval with what the load is then."""
        if not self.stream.subscribed or self.stream.closed:
            return
        loop = asyncio.get_running_loop()
        delay_s = self._throttle.request(loop.time())
        if delay_s is not None:
            self._flush = loop.call_later(delay_s, self._send_load)

    async def watch(self) -> AsyncGenerator[state_pb2.StateEvent, None]:
        """One subscriber's messages: a snapshot, then every later change; ends when the publisher closes."""
        news = asyncio.Event()
        sub = self.stream.subscribe(news.set)
        self._start_ticking()
        try:
            while not self.stream.closed:
                seq = sub.take_snapshot_seq()
                event = sub.pop() if seq is None else await self._snapshot_event(seq)
                if event is not None:
                    yield event
                    continue
                news.clear()
                await news.wait()
        finally:
            self.stream.unsubscribe(sub)

    def close(self) -> None:
        """End every `watch` (e.g. when the server stops: a stream would hold its grace period)."""
        self.stream.close()
        for handle in (self._flush, self._tick):
            if handle is not None:
                handle.cancel()

    async def _snapshot_event(self, seq: int) -> state_pb2.StateEvent:
        snapshot = await self._snapshot()
        snapshot.load.CopyFrom(self.load())
        self._throttle.forget()
        self.report_load()  # reports queued before the snapshot are older than its load: send a newer one
        return self.stream.snapshot_event(seq, snapshot)

    def _send_load(self) -> None:
        self._flush = None
        report = self._throttle.flush(asyncio.get_running_loop().time(), self.load())
        if report is not None:
            self.stream.publish(load=report)

    def _start_ticking(self) -> None:
        if self._tick is None and not self.stream.closed:
            self._tick = asyncio.get_running_loop().call_later(self._report_every_s, self._on_tick)

    def _on_tick(self) -> None:
        self._tick = None
        self.report_load()
        self._start_ticking()


def kv_delta_pb(delta: KvDelta) -> state_pb2.KvDelta:
    return state_pb2.KvDelta(
        cleared=delta.cleared,
        removed=delta.removed,
        snapshots_removed=delta.snapshots_removed,
        stored=delta.stored,
        snapshots_stored=delta.snapshots_stored,
    )
