"""The simulator's parts on hand-checkable cases: event order, link sharing, prefix cache, decode batching,
arrival streams."""

from __future__ import annotations

import numpy as np
import pytest

from prfaas.sched.throughput import gbps_to_bytes_per_s
from prfaas.sched.trace import MooncakeTrace, TraceRequest
from prfaas.sim.arrivals import RateStep, chain_keys, poisson_times, rate_segments, trace_arrivals
from prfaas.sim.cache import PrefixCache
from prfaas.sim.events import EventQueue
from prfaas.sim.instances import DecodeInstance
from prfaas.sim.link import Flow, Link, water_fill

GB = gbps_to_bytes_per_s(8.0)  # 8 Gbps = 1e9 bytes/s, so sizes in GB are seconds at full rate


# -- events ---------------------------------------------------------------------------------------------------------
def test_events_run_in_time_order_and_fifo_on_ties() -> None:
    events, seen = EventQueue(), list[str]()
    for at_s, tag in ((2.0, "c"), (1.0, "a"), (1.0, "b"), (0.5, "first")):
        events.schedule(at_s, seen.append, tag)
    events.run(until_s=1.5)
    assert (seen, events.now_s, len(events)) == (["first", "a", "b"], 1.0, 1)
    events.schedule(0.0, seen.append, "late")  # the past is clamped to now
    events.run(until_s=10.0)
    assert (seen[3:], events.processed) == (["late", "c"], 5)


# -- link ------------------------------------------------------------------------------------------------------------
def _run_flows(link: Link, events: EventQueue, sizes: list[float], starts: list[float]) -> dict[int, float]:
    done: dict[int, float] = {}

    def start(item: tuple[int, float]) -> None:
        i, size = item
        link.start(size, None, lambda: done.__setitem__(i, events.now_s))

    for i, (size, at_s) in enumerate(zip(sizes, starts, strict=True)):
        events.schedule(at_s, start, (i, size))
    events.run(100.0)
    return done


def test_one_flow_runs_at_capacity_two_flows_halve_the_rate() -> None:
    events = EventQueue()
    link = Link(events, 8.0, window_s=5.0, max_flows=8)
    assert _run_flows(link, events, [1e9], [0.0]) == {0: pytest.approx(1.0)}
    events = EventQueue()
    link = Link(events, 8.0, window_s=5.0, max_flows=8)
    assert _run_flows(link, events, [1e9, 1e9], [0.0, 0.0]) == {0: pytest.approx(2.0), 1: pytest.approx(2.0)}


def test_processor_sharing_with_a_late_joiner() -> None:
    """A runs alone for 0.5 s (0.5 GB), then shares: both at 0.5 GB/s; A ends at 1.5 s, B has 0.5 GB left -> 2.0 s."""
    events = EventQueue()
    link = Link(events, 8.0, window_s=5.0, max_flows=8)
    assert _run_flows(link, events, [1e9, 1e9], [0.0, 0.5]) == {0: pytest.approx(1.5), 1: pytest.approx(2.0)}


def test_flows_beyond_the_limit_wait_in_fifo_order() -> None:
    events = EventQueue()
    link = Link(events, 8.0, window_s=5.0, max_flows=1)
    assert _run_flows(link, events, [1e9, 1e9], [0.0, 0.0]) == {0: pytest.approx(1.0), 1: pytest.approx(2.0)}


def test_water_fill_gives_caps_first_and_splits_the_rest() -> None:
    flows = [Flow(1.0, 1.0, lambda: None), Flow(1.0, 100.0, lambda: None), Flow(1.0, None, lambda: None)]
    water_fill(flows, 10.0)
    assert [f.rate_bytes_per_s for f in flows] == [1.0, 4.5, 4.5]


def test_layer_wise_transfer_cannot_finish_before_its_prefill() -> None:
    """KV of 1 GB produced over 2 s on an 8 Gbps (1 GB/s) link: the flow is held to 0.5 GB/s while the prefill
    runs and finishes with it at 2 s, not at 1 s."""
    events = EventQueue()
    link = Link(events, 8.0, window_s=5.0, max_flows=8)
    sent: list[float] = []
    flow = link.start(1e9, 1e9 / 2.0, lambda: sent.append(events.now_s))
    events.schedule(2.0, lambda _: link.uncap(flow))
    events.run(10.0)
    assert sent == [pytest.approx(2.0)]


def test_capacity_change_mid_transfer_and_measured_utilization() -> None:
    events = EventQueue()
    link = Link(events, 8.0, window_s=1.0, max_flows=8)
    done: list[float] = []
    link.start(2e9, None, lambda: done.append(events.now_s))
    events.schedule(1.0, lambda _: link.set_capacity_gbps(4.0))  # 1 GB left at 0.5 GB/s
    utilization: list[float] = []
    for at_s in (2.5, 3.5, 5.0):  # busy window, half busy, idle
        events.schedule(at_s, lambda _: utilization.append(link.utilization()))
    events.run(10.0)
    assert done == [pytest.approx(3.0)]
    assert utilization == [pytest.approx(1.0), pytest.approx(0.5), 0.0]
    assert link.sent_bytes == pytest.approx(2e9)


# -- prefix cache ----------------------------------------------------------------------------------------------------
def test_cache_matches_the_longest_cached_prefix_and_keeps_one_token() -> None:
    cache = PrefixCache(capacity_blocks=10, block_tokens=512)
    cache.insert([1, 2, 3])
    assert cache.match_blocks([1, 2, 4]) == 2
    assert cache.match_blocks([9, 1, 2]) == 0
    assert cache.match_tokens([1, 2, 3], prompt_tokens=1536) == 1535
    assert cache.match_tokens([], prompt_tokens=100) == 0


def test_cache_evicts_least_recent_and_tails_first() -> None:
    cache = PrefixCache(capacity_blocks=4, block_tokens=512)
    cache.insert([1, 2, 3])  # recency, oldest first: 3, 2, 1
    cache.insert([7, 8])  # then 8, 7 (a tail is older than its head): evicts 3
    assert (3 in cache, cache.match_blocks([1, 2, 3]), cache.evicted_blocks) == (False, 2, 1)
    cache.match_blocks([1, 2], touch=True)  # recency now 8, 7, 2, 1
    cache.insert([5])
    assert [k in cache for k in (1, 2, 7, 8, 5)] == [True, True, True, False, True]


# -- decode batching -------------------------------------------------------------------------------------------------
def test_decode_joins_at_step_boundaries_and_finishes_after_l_out_steps() -> None:
    decoder = DecodeInstance(batch_size=3, step_s=0.025)
    first = decoder.join(10.0)  # idle: steps start now
    second = decoder.join(10.03)  # mid-step: waits for the boundary at 10.05
    assert (first, second, decoder.active) == (10.0, pytest.approx(10.05), 2)
    assert decoder.finish_time_s(second, 100) == pytest.approx(12.55)
    assert decoder.join(10.05) == pytest.approx(10.05)  # exactly on a boundary
    decoder.active = 0
    assert decoder.join(11.0) == 11.0  # idle again: a new step clock


# -- arrivals --------------------------------------------------------------------------------------------------------
def test_rate_segments_apply_steps_in_time_order() -> None:
    steps = [RateStep(60.0, 1.0), RateStep(20.0, 4.0)]
    assert rate_segments(2.0, steps, 100.0) == [(0.0, 20.0, 2.0), (20.0, 60.0, 4.0), (60.0, 100.0, 1.0)]


def test_poisson_times_follow_the_rate_of_each_segment() -> None:
    times = np.asarray(poisson_times(np.random.default_rng(0), [(0.0, 1000.0, 2.0), (1000.0, 2000.0, 6.0)]))
    assert np.all(np.diff(times) >= 0)
    assert np.sum(times < 1000) == pytest.approx(2000, rel=0.05)
    assert np.sum(times >= 1000) == pytest.approx(6000, rel=0.05)


def test_chain_keys_equal_iff_the_prefix_is_equal() -> None:
    a, b = chain_keys([5, 6, 7], 3), chain_keys([5, 6, 8], 3)
    assert a[:2] == b[:2] and a[2] != b[2]
    assert chain_keys([6, 6], 2)[1] != chain_keys([5, 6], 2)[1]  # same id, different parent
    assert chain_keys([5, 6, 7], 2) == a[:2]


def test_trace_replay_keeps_full_blocks_and_rescales_time() -> None:
    requests = (TraceRequest(0.0, 1100, 10, (1, 2, 3)), TraceRequest(2000.0, 700, 0, (1, 9)))
    arrivals = trace_arrivals(MooncakeTrace(requests), duration_s=100.0, rate_rps=2.0)
    assert [a.at_s for a in arrivals] == [0.0, 1.0]  # 2 requests over 2 s at 2 req/s -> 1 s apart
    assert [len(a.block_keys) for a in arrivals] == [2, 1]  # 1100 // 512 and 700 // 512 full blocks
    assert arrivals[0].block_keys[0] == arrivals[1].block_keys[0]
    assert arrivals[1].output_tokens == 1  # at least one decode step
