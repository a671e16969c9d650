"""The whole simulator: exact timelines on toy deployments, prefix reuse on the Mooncake trace, role changes,
and the reference check: at saturation it agrees with the analytical planner (Eq. 6)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from prfaas.sched.planner import Plan, paper_scenario, plan, search
from prfaas.sched.policy import PD, PRFAAS, AdaptivePolicy, Split, make_policy
from prfaas.sched.profile import DecodeCapacity, HardwareProfile, LinearKvSize, QuadraticPrefillTime
from prfaas.sched.scenario import paper_workload
from prfaas.sched.trace import MooncakeTrace, load_mooncake_trace
from prfaas.sim.arrivals import Arrival, trace_arrivals
from prfaas.sim.config import Deployment, LinkEvent, SimConfig, deployment_for
from prfaas.sim.control import LengthSample
from prfaas.sim.experiment import WorkloadSpec, build_workload, run_policy
from prfaas.sim.metrics import summarize
from prfaas.sim.simulator import Simulator

TRACE = Path("/work/shared/data/mooncake-traces/conversation_trace.jsonl")
GB = 1e9


def toy_deployment(n_prfaas: int, split: Split, link_gbps: float = 8.0) -> Deployment:
    """Every prefill takes 1 s; KV is 2 GB whatever the length; decode: 2 sequences, 0.1 s a step."""
    prefill = HardwareProfile("toy", QuadraticPrefillTime(1.0, 0.0, 0.0), LinearKvSize(2 * GB, 0.0))
    pd = HardwareProfile("toy-pd", prefill.prefill, prefill.kv, DecodeCapacity(max_batch_size=2, step_s=0.1))
    return Deployment(prefill, pd, n_prfaas, split, link_gbps)


def toy_run(policy: str, n_prfaas: int, split: Split, arrivals: list[Arrival], **config: object) -> Simulator:
    settings = SimConfig(duration_s=50.0, warmup_s=0.0, **config)  # type: ignore[arg-type]
    return Simulator(toy_deployment(n_prfaas, split), make_policy(policy, 0.0), arrivals, settings).run()


def test_local_prefill_then_decode_batching_timeline() -> None:
    """Three requests prefill in parallel (1 s); the 2-slot decoder takes two at 1 s (10 steps -> 2 s), the
    third waits for a slot and joins at 2 s."""
    sim = toy_run("homogeneous", 0, Split(3, 1), [Arrival(0.0, 1000, 10) for _ in range(3)])
    assert [r.route for r in sim.requests] == [PD] * 3
    assert [r.ttft_s for r in sim.requests] == [1.0, 1.0, 1.0]
    assert [r.finish_s for r in sim.requests] == pytest.approx([2.0, 2.0, 3.0])


def test_prfaas_kv_streams_over_the_link_during_prefill() -> None:
    """2 GB over 1 GB/s: 1 GB is sent while the 1 s prefill runs, the rest after it: the KV lands at 2 s."""
    sim = toy_run("naive", 1, Split(0, 1), [Arrival(0.0, 1000, 1)])
    req = sim.requests[0]
    assert (req.route, req.prefill_end_s, req.ttft_s, req.transfer_bytes) == (PRFAAS, 1.0, pytest.approx(2.0), 2 * GB)


def test_two_transfers_share_the_link_fairly() -> None:
    sim = toy_run("naive", 2, Split(0, 1), [Arrival(0.0, 1000, 1), Arrival(0.0, 1000, 1)])
    assert [r.ttft_s for r in sim.requests] == [pytest.approx(4.0), pytest.approx(4.0)]  # 4 GB at 1 GB/s


def test_link_event_changes_capacity_mid_transfer() -> None:
    """1 GB by 1 s; at 1 s the link doubles to 2 GB/s: the second GB takes 0.5 s."""
    arrivals = [Arrival(0.0, 1000, 1)]
    sim = toy_run("naive", 1, Split(0, 1), arrivals, link_events=(LinkEvent(1.0, 16.0),))
    assert sim.requests[0].ttft_s == pytest.approx(1.5)


def test_abundant_rule_moves_the_longer_prefix_before_prefill() -> None:
    """PrfaaS caches 4 blocks PD lacks; t is high so PD computes, after the prefix crossed the link (2 GB)."""
    keys = (11, 12, 13, 14)
    deployment = toy_deployment(1, Split(1, 1))
    sim = Simulator(deployment, make_policy("prfaas", 1e9), [Arrival(0.0, 2100, 1, keys)], SimConfig(50.0, 0.0))
    sim.caches[PRFAAS].insert(keys)
    sim.run()
    req = sim.requests[0]
    assert req.decision is not None and req.decision.move_prefix
    assert (req.route, req.moved_tokens, req.computed_tokens) == (PD, 2048, 52)
    assert req.prefill_start_s == pytest.approx(2.0)  # after 2 GB at 1 GB/s
    assert sim.caches[PD].match_blocks(keys) == 4


def test_role_changes_drain_then_convert_without_losing_requests() -> None:
    """The link drops to 10 Gbps at 20 s; the 30 s re-plan asks for 4/4 instead of 3/5 (as ``prfaas plan
    --link-gbps 10`` does): a busy decoder drains, converts, and every request still completes."""
    scenario = paper_scenario()
    best = search(scenario)
    lengths = paper_workload().sample(np.random.default_rng(1), 2000).tolist()
    arrivals = [Arrival(0.5 * i, round(n), 1024) for i, n in enumerate(lengths[:120])]
    deployment = deployment_for("prfaas", scenario, best)
    policy = AdaptivePolicy(best.split.threshold_tokens, deployment.split)
    config = SimConfig(duration_s=60.0, warmup_s=0.0, link_events=(LinkEvent(20.0, 10.0),), update_period_s=30.0)
    sim = Simulator(deployment, policy, arrivals, config).run(LengthSample(tuple(lengths), tuple(lengths), 1024.0))
    (at_s, split), *_ = sim.control.role_changes
    assert 30.0 < at_s < 60.0 and split == Split(4, 4)
    assert len(sim.requests) == len(arrivals)
    assert all(not np.isnan(r.finish_s) for r in sim.requests)


def test_prefix_reuse_on_the_mooncake_trace() -> None:
    trace = load_mooncake_trace(TRACE)
    arrivals = trace_arrivals(trace, duration_s=120.0)
    scenario = paper_scenario()
    best = search(scenario)
    deployment = deployment_for("prfaas-static-t", scenario, best)
    runs = {}
    for blocks in (200_000, 0):
        config = SimConfig(duration_s=120.0, warmup_s=0.0, cache_capacity_blocks=blocks)
        policy = make_policy("prfaas-static-t", 6_000.0)
        runs[blocks] = summarize(Simulator(deployment, policy, arrivals, config).run(), 0.0)
    window = MooncakeTrace(tuple(r for r in trace.requests if r.timestamp_ms < 120_000))
    reusable = 1 - sum(window.uncached_lengths().lengths_tokens) / sum(window.input_lengths().lengths_tokens)
    assert 0.5 * reusable < runs[200_000].prefix_hit_fraction <= reusable  # in-flight twins miss each other
    assert runs[0].prefix_hit_fraction == 0.0
    assert runs[200_000].ttft.mean_s < runs[0].ttft.mean_s


@pytest.fixture(scope="module")
def paper_plan() -> Plan:
    return plan(paper_scenario())


@pytest.mark.parametrize(
    ("policy", "planned"), [("prfaas-static-t", "throughput_rps"), ("homogeneous", "homogeneous_rps")]
)
def test_saturated_throughput_matches_the_planner(paper_plan: Plan, policy: str, planned: str) -> None:
    """Arrivals at 4 req/s exceed every capacity; completions after warm-up measure ``Lambda_max`` (Eq. 6).
    The model is a little optimistic (it prices every PrfaaS prefill at ``T(l_long)``, and T is convex)."""
    config = SimConfig(duration_s=1500.0, warmup_s=300.0, seed=0)
    workload = build_workload(WorkloadSpec("lognormal", 4.0), paper_scenario(), config.seed, config.duration_s)
    started = time.perf_counter()
    result = run_policy(policy, workload, config)
    wall_s = time.perf_counter() - started
    assert result.throughput_rps == pytest.approx(getattr(paper_plan, planned), rel=0.05)
    assert result.events / wall_s > 20_000
