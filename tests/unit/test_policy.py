"""Every branch of every routing rule in ``prfaas.sched.policy`` (§3.3, §3.4.3), with exact decisions."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from prfaas.sched.policy import (
    PD,
    POLICIES,
    PRFAAS,
    AdaptivePolicy,
    AdaptiveSettings,
    ClusterState,
    PeriodObservation,
    RequestView,
    Split,
    abundant_rule,
    make_policy,
    scarce_rule,
)
from prfaas.sched.scenario import paper_h20, paper_h200, paper_workload

T = 10_000


def state(**changes: object) -> ClusterState:
    """An idle, healthy deployment: link quiet, queues empty (limits 8 PrfaaS, 6 PD)."""
    base = ClusterState(
        prfaas_available=True,
        egress_utilization=0.1,
        link_gbps=100.0,
        prfaas_queue_depth=0,
        prfaas_queue_limit=8,
        pd_queue_depth=0,
        n_prefill=3,
        n_decode=5,
        pd_queue_limit=6,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


PAPER_SPLIT = Split(3, 5)


def observation(lengths: list[float], link_gbps: float = 100.0, split: Split = PAPER_SPLIT) -> PeriodObservation:
    return PeriodObservation(
        incremental_tokens=tuple(lengths),
        prompt_tokens=tuple(2 * x for x in lengths),
        link_gbps=link_gbps,
        n_prfaas=4,
        n_prefill=split.n_prefill,
        n_decode=split.n_decode,
        output_tokens=1024.0,
        prfaas_profile=paper_h200(),
        pd_profile=paper_h20(),
    )


@pytest.fixture(scope="module")
def paper_sample() -> list[float]:
    return paper_workload().sample(np.random.default_rng(0), 2000).tolist()


# -- the bandwidth-scarce rule ------------------------------------------------------------------------------------
def test_scarce_offloads_when_pd_increment_exceeds_t() -> None:
    d = scarce_rule(RequestView(30_000, cached_pd_tokens=5_000, cached_prfaas_tokens=12_000), T)
    assert (d.route, d.incremental_tokens, d.cache_cluster, d.move_prefix) == (PRFAAS, 18_000, PRFAAS, False)
    assert d.reason == "scarce: l=25000 > t=10000"


def test_scarce_keeps_local_at_or_below_t() -> None:
    d = scarce_rule(RequestView(15_000, cached_pd_tokens=5_000, cached_prfaas_tokens=14_000), T)
    assert (d.route, d.incremental_tokens, d.cache_cluster, d.move_prefix) == (PD, 10_000, PD, False)


# -- the bandwidth-abundant rule ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("pd", "prfaas", "prompt", "route", "incremental", "holder", "move"),
    [
        (8_000, 2_000, 15_000, PD, 7_000, PD, False),  # PD holds the longer prefix and computes
        (8_000, 2_000, 30_000, PRFAAS, 22_000, PD, True),  # PD's prefix moves to PrfaaS
        (2_000, 8_000, 30_000, PRFAAS, 22_000, PRFAAS, False),  # PrfaaS holds it and computes
        (2_000, 8_000, 15_000, PD, 7_000, PRFAAS, True),  # PrfaaS's prefix moves to PD
        (4_000, 4_000, 30_000, PRFAAS, 26_000, PD, False),  # equal prefixes: nothing to move
    ],
)
def test_abundant_rule_uses_the_longer_prefix(
    pd: int, prfaas: int, prompt: int, route: str, incremental: int, holder: str, move: bool
) -> None:
    d = abundant_rule(RequestView(prompt, pd, prfaas), T)
    assert (d.route, d.incremental_tokens, d.cache_cluster, d.move_prefix) == (route, incremental, holder, move)
    assert ("prefix moves from" in d.reason) is move


# -- the adaptive policy: fallbacks and modes ---------------------------------------------------------------------
def test_unavailable_prfaas_routes_local() -> None:
    d = make_policy("prfaas", T).route(RequestView(90_000), state(prfaas_available=False))
    assert (d.route, d.reason, d.incremental_tokens) == (PD, "PrfaaS unavailable", 90_000)


def test_overloaded_prfaas_routes_local_only_if_pd_has_headroom() -> None:
    policy = make_policy("prfaas", T)
    d = policy.route(RequestView(90_000), state(prfaas_queue_depth=16))
    assert (d.route, d.reason) == (PD, "PrfaaS overloaded: queue 16")
    busy_pd = policy.route(RequestView(90_000), state(prfaas_queue_depth=16, pd_queue_depth=6))
    assert busy_pd.route == PRFAAS


def test_mode_hysteresis_between_abundant_and_scarce() -> None:
    """PrfaaS caches more than PD: the abundant rule moves the prefix, the scarce rule does not."""
    policy = AdaptivePolicy(T)
    req = RequestView(14_000, cached_pd_tokens=0, cached_prfaas_tokens=8_000)
    modes = []
    for util in (0.1, 0.5, 0.8, 0.5, 0.2):
        decision = policy.route(req, state(egress_utilization=util))
        modes.append((policy.mode, decision.route, decision.move_prefix))
    assert modes == [
        ("abundant", PD, True),
        ("abundant", PD, True),  # 0.5 is between the thresholds: the mode holds
        ("scarce", PRFAAS, False),
        ("scarce", PRFAAS, False),
        ("abundant", PD, True),
    ]


# -- the adaptive policy: t moves ---------------------------------------------------------------------------------
def test_unplanned_link_pressure_raises_t_up_to_the_cap() -> None:
    policy = AdaptivePolicy(T, settings=AdaptiveSettings(raise_factor=2.0, max_multiplier=4.0))
    thresholds = []
    for _ in range(4):
        thresholds.append(policy.route(RequestView(1), state(egress_utilization=0.95)).threshold_tokens)
    assert thresholds == [20_000, 40_000, 40_000, 40_000]


def test_hot_link_with_pd_full_holds_t() -> None:
    """Neither side can take more: t neither rises (PD is full) nor falls or decays (the link is hot)."""
    policy = AdaptivePolicy(T, settings=AdaptiveSettings(raise_factor=2.0))
    policy.route(RequestView(1), state(egress_utilization=0.95))
    held = [policy.route(RequestView(1), state(egress_utilization=0.95, pd_queue_depth=6)).threshold_tokens]
    assert held == [20_000]


def test_link_pressure_expected_by_an_egress_bound_plan_does_not_raise_t(paper_sample: list[float]) -> None:
    policy = AdaptivePolicy(T)
    policy.update(observation(paper_sample, link_gbps=10.0))
    planned = policy.threshold_tokens
    policy.route(RequestView(1), state(egress_utilization=0.99, link_gbps=10.0))
    assert policy.threshold_tokens == planned


def test_prfaas_queue_pressure_raises_t_only_if_pd_has_headroom() -> None:
    policy = AdaptivePolicy(T)
    policy.route(RequestView(1), state(prfaas_queue_depth=8, pd_queue_depth=2))
    assert policy.threshold_tokens == pytest.approx(1.05 * T)
    policy.route(RequestView(1), state(prfaas_queue_depth=8, pd_queue_depth=3))  # PD at 50%: no headroom
    assert policy.threshold_tokens == pytest.approx(T * (1 + 0.05 * 0.9))  # so it decays instead


def test_pd_pressure_lowers_t_down_to_the_floor() -> None:
    policy = AdaptivePolicy(T, settings=AdaptiveSettings(raise_factor=2.0, min_multiplier=0.5))
    thresholds = [policy.route(RequestView(1), state(pd_queue_depth=6)).threshold_tokens for _ in range(3)]
    assert thresholds == [5_000, 5_000, 5_000]


def test_t_decays_back_once_pressure_is_gone() -> None:
    policy = AdaptivePolicy(T, settings=AdaptiveSettings(raise_factor=2.0, decay=0.5))
    policy.route(RequestView(1), state(egress_utilization=0.95))
    calm = [policy.route(RequestView(1), state()).threshold_tokens for _ in range(2)]
    assert calm == [15_000, 12_500]


# -- the adaptive policy: long timescale ---------------------------------------------------------------------------
def test_update_replans_t_and_split_like_the_planner(paper_sample: list[float]) -> None:
    policy = AdaptivePolicy(1.0, Split(1, 7))
    policy.update(observation(paper_sample))
    assert 18_000 <= policy.threshold_tokens <= 21_000  # the planner's 19.4K on the exact law
    assert policy.recommended_split == Split(3, 5)


def test_update_follows_a_bandwidth_drop(paper_sample: list[float]) -> None:
    policy = AdaptivePolicy(19_400, Split(3, 5))
    policy.update(observation(paper_sample, link_gbps=10.0))
    assert 24_000 <= policy.threshold_tokens <= 28_000  # the planner's 25.7K at 10 Gbps
    assert policy.recommended_split == Split(4, 4)


def test_update_keeps_a_near_optimal_split(paper_sample: list[float]) -> None:
    """At 4/4 decode caps Lambda at 3.12 vs ~3.28 for 3/5 on this sample: +5%, under a 10% bar."""
    policy = AdaptivePolicy(19_400, Split(4, 4), AdaptiveSettings(resplit_gain=0.10))
    policy.update(observation(paper_sample, split=Split(4, 4)))
    assert policy.recommended_split == Split(4, 4)
    eager = AdaptivePolicy(19_400, Split(4, 4), AdaptiveSettings(resplit_gain=0.0))
    eager.update(observation(paper_sample, split=Split(4, 4)))
    assert eager.recommended_split == Split(3, 5)


# -- ablations and baselines ----------------------------------------------------------------------------------------
def test_no_cache_routes_on_the_whole_prompt_and_plans_on_prompts(paper_sample: list[float]) -> None:
    policy = make_policy("prfaas-no-cache", T)
    d = policy.route(RequestView(12_000, cached_pd_tokens=8_000, cached_prfaas_tokens=8_000), state())
    assert (d.route, d.incremental_tokens, d.cache_cluster, d.move_prefix) == (PRFAAS, 12_000, None, False)
    aware = make_policy("prfaas", T)
    for p in (policy, aware):
        p.update(observation(paper_sample))  # prompts are twice the incremental lengths here
    assert policy.threshold_tokens > 1.5 * aware.threshold_tokens


def test_no_short_keeps_t_and_the_scarce_rule_under_pressure(paper_sample: list[float]) -> None:
    policy = make_policy("prfaas-no-short", T)
    d = policy.route(RequestView(14_000, 0, 8_000), state(egress_utilization=0.1, prfaas_queue_depth=80))
    assert (d.route, d.move_prefix, policy.threshold_tokens) == (PRFAAS, False, T)
    policy.update(observation(paper_sample))
    assert policy.threshold_tokens != T


def test_static_t_never_changes_t(paper_sample: list[float]) -> None:
    policy = make_policy("prfaas-static-t", T, Split(3, 5))
    policy.route(RequestView(1), state(egress_utilization=1.0, prfaas_queue_depth=80))
    policy.update(observation(paper_sample, link_gbps=10.0))
    assert (policy.threshold_tokens, policy.recommended_split) == (T, Split(3, 5))
    assert policy.route(RequestView(90_000), state(prfaas_available=False)).route == PD


@pytest.mark.parametrize(("name", "route", "t"), [("homogeneous", PD, math.inf), ("naive", PRFAAS, -math.inf)])
def test_fixed_route_baselines(name: str, route: str, t: float) -> None:
    policy = make_policy(name, T)
    d = policy.route(RequestView(5_000, cached_pd_tokens=1_000, cached_prfaas_tokens=3_000), state())
    assert (d.route, d.incremental_tokens, d.threshold_tokens) == (
        route,
        5_000 - (1_000 if route == PD else 3_000),
        t,
    )
    assert (policy.threshold_tokens, policy.recommended_split, policy.name) == (t, None, name)
    policy.update(observation([1.0]))  # a no-op


def test_registry_builds_every_policy_under_its_name() -> None:
    assert list(POLICIES) == [
        "prfaas",
        "prfaas-static-t",
        "prfaas-no-cache",
        "prfaas-no-short",
        "homogeneous",
        "naive",
    ]
    for name in POLICIES:
        assert make_policy(name, T).name == name
    with pytest.raises(ValueError, match="unknown policy 'nope'; choose from prfaas,"):
        make_policy("nope", T)
