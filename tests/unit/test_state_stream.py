"""A source's state stream: sequence numbers, snapshot first, bounded queues with a fresh snapshot on
overflow, coalesced load reports (the sync core, then the publisher on an event loop)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from prfaas.kv.changes import KvDelta
from prfaas.state import StatePublisher, StateStream
from prfaas.state.stream import LoadThrottle
from prfaas.v1 import state_pb2


def kv(*stored: bytes) -> state_pb2.KvDelta:
    return state_pb2.KvDelta(stored=stored)


def test_a_subscription_owes_a_snapshot_at_its_seq_then_gets_every_later_message() -> None:
    stream = StateStream(instance_id="src")
    assert stream.publish(kv=kv(b"a")) is None  # nobody listens: nothing published, no seq used
    first = stream.subscribe(lambda: None)
    stream.publish(kv=kv(b"b"))
    second = stream.subscribe(lambda: None)
    stream.publish(load=state_pb2.LoadReport(queue_depth=1))
    assert (first.take_snapshot_seq(), second.take_snapshot_seq()) == (0, 1)
    assert first.take_snapshot_seq() is None  # taken once
    assert [(e.instance_id, e.seq, e.WhichOneof("event")) for e in first.events] == [
        ("src", 1, "kv"),
        ("src", 2, "load"),
    ]
    assert [e.seq for e in second.events] == [2]


def test_overflow_drops_the_queue_and_owes_a_snapshot_at_the_overflowing_seq() -> None:
    stream = StateStream(max_queued=3)
    woken: list[int] = []
    sub = stream.subscribe(lambda: woken.append(1))
    assert sub.take_snapshot_seq() == 0
    for i in range(3):
        stream.publish(kv=kv(bytes([i])))
    assert stream.queued() == [3]
    stream.publish(kv=kv(b"x"))  # seq 4 overflows
    assert stream.queued() == [0] and sub.snapshot_seq == 4
    for i in range(10):  # bounded whatever the subscriber does
        stream.publish(kv=kv(bytes([i])))
        assert max(stream.queued()) <= 3
    assert sub.take_snapshot_seq() == 12  # the last overflow: seq 12 (queue held 9..11)
    assert [e.seq for e in sub.events] == [13, 14]
    assert len(woken) == 14


def test_instance_ids_are_new_per_stream_and_unsubscribing_stops_the_queue() -> None:
    a, b = StateStream(), StateStream()
    assert a.instance_id != b.instance_id and len(a.instance_id) == 32
    sub = a.subscribe(lambda: None)
    a.unsubscribe(sub)
    assert a.publish(kv=kv(b"a")) is None and a.queued() == []


def test_load_throttle_sends_at_most_one_report_per_interval_and_skips_repeats() -> None:
    throttle = LoadThrottle(0.2)
    one, two = state_pb2.LoadReport(queue_depth=1), state_pb2.LoadReport(queue_depth=2)
    assert throttle.request(10.0) == 0.0
    assert throttle.request(10.0) is None  # a flush is already due
    assert throttle.flush(10.0, one) == one
    assert throttle.request(10.05) == pytest.approx(0.15)  # served at the end of the interval
    assert throttle.flush(10.2, one) is None  # nothing new
    assert throttle.request(11.0) == 0.0
    assert throttle.flush(11.0, two) == two
    throttle.forget()
    assert throttle.request(12.0) == 0.0 and throttle.flush(12.0, two) == two


class Source:
    """A fake source: a set of held blocks and a queue depth."""

    def __init__(self) -> None:
        self.blocks: list[bytes] = []
        self.depth = 0

    async def snapshot(self) -> state_pb2.StateSnapshot:
        return state_pb2.StateSnapshot(block_hashes=self.blocks)

    def load(self) -> state_pb2.LoadReport:
        return state_pb2.LoadReport(queue_depth=self.depth)


@contextlib.asynccontextmanager
async def publishing(source: Source, **kw: float) -> AsyncIterator[StatePublisher]:
    publisher = StatePublisher(source.snapshot, instance_id="src", **kw)  # type: ignore[arg-type]
    publisher.add_load(source.load)
    yield publisher
    publisher.close()


async def test_watch_starts_with_a_snapshot_then_streams_deltas_in_order() -> None:
    source = Source()
    source.blocks = [b"a"]
    async with publishing(source) as publisher:
        events = publisher.watch()
        snap = await anext(events)
        assert (snap.seq, list(snap.snapshot.block_hashes), snap.snapshot.load.queue_depth) == (0, [b"a"], 0)
        publisher.publish_kv(KvDelta(removed=(b"a",), stored=(b"b",)))
        publisher.publish_kv(KvDelta(cleared=True))
        got = [await anext(events), await anext(events)]
        assert [(e.seq, list(e.kv.removed), list(e.kv.stored), e.kv.cleared) for e in got] == [
            (1, [b"a"], [b"b"], False),
            (2, [], [], True),
        ]
        await events.aclose()
        assert publisher.stream.queued() == []  # a subscriber that goes away is removed


async def test_load_reports_are_coalesced_and_carry_the_latest_load() -> None:
    source = Source()
    async with publishing(source, min_report_interval_s=0.1, report_every_s=60) as publisher:
        events = publisher.watch()
        await anext(events)  # snapshot; it asks for a report of its own
        assert (await anext(events)).load.queue_depth == 0
        loop = asyncio.get_running_loop()
        start = loop.time()
        for depth in range(1, 6):
            source.depth = depth
            publisher.report_load()
        trailing = await anext(events)
        assert trailing.load.queue_depth == 5 and trailing.seq == 2  # five requests, one report
        assert 0.05 <= loop.time() - start <= 0.5
        publisher.report_load()  # due at the end of the interval
        source.depth = 6
        publisher.report_load()  # coalesced into it: the report says what the load is when it goes
        assert (await anext(events)).load.queue_depth == 6
        await events.aclose()


async def test_periodic_reports_and_close_end_the_stream() -> None:
    source = Source()
    async with publishing(source, min_report_interval_s=0.01, report_every_s=0.05) as publisher:
        events = publisher.watch()
        await anext(events)
        await anext(events)  # the report after the snapshot
        source.depth = 3  # nobody asks: the periodic report carries it
        assert (await asyncio.wait_for(anext(events), 2)).load.queue_depth == 3
        publisher.close()
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(anext(events), 2)


async def test_a_slow_subscriber_is_resynced_with_a_fresh_snapshot() -> None:
    source = Source()
    async with publishing(source, max_queued=8, report_every_s=60) as publisher:
        events = publisher.watch()
        await anext(events)
        await anext(events)  # seq 1: the report after the snapshot
        for i in range(100):  # not read meanwhile
            source.blocks.append(bytes([i]))
            publisher.publish_kv(KvDelta(stored=(bytes([i]),)))
            assert max(publisher.stream.queued()) <= 8
        resync = await anext(events)
        assert resync.WhichOneof("event") == "snapshot" and resync.seq > 2
        assert len(resync.snapshot.block_hashes) == 100
        after = [await anext(events) for _ in range(2)]
        assert [e.seq for e in after] == [resync.seq + 1, resync.seq + 2]
        await events.aclose()


def test_an_unchanged_report_is_repeated_as_the_heartbeat() -> None:
    throttle = LoadThrottle(0.2, heartbeat_s=1.0)
    report = state_pb2.LoadReport(registered=2)
    assert throttle.flush(0.0, report) == report
    assert throttle.flush(0.5, state_pb2.LoadReport(registered=2)) is None  # nothing new, heartbeat not due
    assert throttle.flush(1.0, state_pb2.LoadReport(registered=2)) == report  # a second without a report
    assert throttle.flush(1.5, state_pb2.LoadReport(registered=2)) is None
