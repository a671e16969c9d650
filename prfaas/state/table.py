"""What a router knows of every source from the sources' state streams: the KV index and each source's
latest load report, with the stream rules applied (snapshot first, seq continuity, one instance).

Rules: a snapshot replaces all that was known of the source. A delta or load report is applied only if it
comes from the instance of the last snapshot and its seq is exactly one more than the last message's; any
other message means messages were lost or the source restarted, and `apply` says to resubscribe (the
source's entries are dropped until the new snapshot arrives). Requests the router sends to a worker after
its latest load report are counted here (`sent`), and those that finish are taken off (`finished`), so a
decision between two reports sees both.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prfaas.state.index import KvIndex
from prfaas.v1 import common_pb2, state_pb2


@dataclass(slots=True)
class SourceState:
    instance_id: str = ""
    seq: int = 0
    synced: bool = False  # a snapshot arrived and every message since was applied
    load: state_pb2.LoadReport = field(default_factory=state_pb2.LoadReport)
    info: common_pb2.WorkerInfo | None = None
    sent: int = 0  # requests the router sent it since its latest load report


class SourceTable:
    def __init__(self) -> None:
        self.index = KvIndex()
        self.sources: dict[str, SourceState] = {}
        # Per synced source, kept current as messages arrive so a decision reads them in O(1): its work in
        # flight (queued prefills + registered decodes + requests sent since its latest report) and its slots.
        self.busy: dict[str, int] = {}
        self.slots: dict[str, int] = {}

    def apply(self, source: str, event: state_pb2.StateEvent) -> bool:
        """Apply one message of `source`'s stream; False when the stream must be resubscribed."""
        state = self.sources.setdefault(source, SourceState())
        kind = event.WhichOneof("event")
        if kind == "snapshot":
            self._snapshot(source, state, event)
            return True
        if not state.synced or event.instance_id != state.instance_id or event.seq != state.seq + 1:
            self.lost(source)
            return False
        state.seq = event.seq
        if kind == "kv":
            self._delta(source, event.kv)
        elif kind == "load":
            self._report(source, state, event.load)
        return True

    def lost(self, source: str) -> None:
        """The source's stream broke or skipped: nothing it reported is trusted until its next snapshot."""
        self.index.drop(source)
        self.busy.pop(source, None)
        self.slots.pop(source, None)
        state = self.sources.get(source)
        if state is not None:
            state.synced = False

    def synced(self, source: str) -> bool:
        state = self.sources.get(source)
        return state is not None and state.synced

    def load(self, source: str) -> SourceState | None:
        """The source's latest state, None until it is synced."""
        state = self.sources.get(source)
        return state if state is not None and state.synced else None

    def sent(self, source: str) -> None:
        """The router sent the source a request (counted until the source's next load report)."""
        state = self.sources.get(source)
        if state is not None and state.synced:
            state.sent += 1
            self.busy[source] += 1

    def finished(self, source: str) -> None:
        """A request the router sent the source is done there: whether the latest report or `sent` counted
        it, it no longer does (at worst one request too few until the next report)."""
        if self.busy.get(source):
            self.busy[source] -= 1

    def _snapshot(self, source: str, state: SourceState, event: state_pb2.StateEvent) -> None:
        snap = event.snapshot
        self.index.replace(source, snap.block_hashes, snap.snapshot_hashes)
        state.instance_id, state.seq, state.synced = event.instance_id, event.seq, True
        state.info = snap.info if snap.HasField("info") else None
        self._report(source, state, snap.load)

    def _report(self, source: str, state: SourceState, load: state_pb2.LoadReport) -> None:
        """A load report counts everything the source had received when it made it."""
        state.load, state.sent = load, 0
        self.busy[source] = load.queue_depth + load.registered
        self.slots[source] = load.slots

    def _delta(self, source: str, kv: state_pb2.KvDelta) -> None:
        self.index.update(
            source,
            stored=kv.stored,
            removed=kv.removed,
            snapshots_stored=kv.snapshots_stored,
            snapshots_removed=kv.snapshots_removed,
            cleared=kv.cleared,
        )
