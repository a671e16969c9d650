"""The grid search on hand-solvable cases, the Figure 5 sweeps, and the Table 6 reproduction."""

import dataclasses
import itertools
import math

import pytest

from prfaas.sched.planner import (
    PAPER_TABLE6,
    SUMMARY_KEYS,
    Plan,
    evaluate,
    homogeneous_baseline,
    naive_baseline,
    paper_scenario,
    plan,
    search,
    split_sweep,
    threshold_grid,
    threshold_sweep,
)
from prfaas.sched.profile import DecodeCapacity, HardwareProfile, LinearKvSize, QuadraticPrefillTime
from prfaas.sched.scenario import Scenario
from prfaas.sched.throughput import Bottleneck, prefill_balance_residual_rps
from prfaas.sched.workload import EmpiricalLengths, split_at


@pytest.fixture(scope="module")
def paper_plan() -> Plan:
    return plan(paper_scenario())


def toy_scenario(**changes: object) -> Scenario:
    """Lengths {1000, 3000}; PrfaaS prefill l/1000 s, PD prefill 2l/1000 s, 10 req/s per decoder."""
    prfaas = HardwareProfile("fast", QuadraticPrefillTime(0.0, 1e-3, 0.0), LinearKvSize(0.0, 1.0))
    pd = HardwareProfile(
        "slow",
        QuadraticPrefillTime(0.0, 2e-3, 0.0),
        LinearKvSize(0.0, 1.0),
        DecodeCapacity(max_batch_size=10.0, step_s=0.01),
    )
    base = Scenario(prfaas, pd, 1, 2, 100.0, 100.0, EmpiricalLengths.of([1000, 3000]))
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_toy_optimum_by_hand() -> None:
    # t in {0, 1000, 2000, 3000}. t = 1000: p = 1/2, l_long = 3000, l_short = 1000 ->
    # Theta_prfaas / p = (1/3) / (1/2) = 2/3; N_p = 1: Theta_pd-p / (1-p) = (1/2) / (1/2) = 1;
    # N_d = 1: 10. t = 0 gives 1/2 (PrfaaS alone), t = 3000 gives at most 1/4.
    best = search(toy_scenario(), step_tokens=1000)
    assert best.split.threshold_tokens == 1000
    assert (best.n_prfaas, best.n_prefill, best.n_decode) == (1, 1, 1)
    assert best.throughput_rps == pytest.approx(2 / 3)
    assert best.bottleneck is Bottleneck.PRFAAS_COMPUTE
    assert best.egress_bytes_per_s == pytest.approx(2 / 3 * 0.5 * 3000)


def test_toy_baselines_by_hand() -> None:
    scenario = toy_scenario()
    homogeneous = homogeneous_baseline(scenario)  # 3 slow instances, l = 2000 -> 4 s per prefill
    assert (homogeneous.n_prfaas, homogeneous.n_prefill, homogeneous.n_decode) == (0, 2, 1)
    assert homogeneous.throughput_rps == pytest.approx(0.5)
    naive = naive_baseline(scenario)  # 1 fast instance, l = 2000 -> 2 s per prefill
    assert (naive.n_prefill, naive.n_decode) == (0, 2)
    assert naive.throughput_rps == pytest.approx(0.5)
    assert naive.egress_bytes_per_s == pytest.approx(0.5 * 2000)


def test_toy_egress_bound() -> None:
    # 6e-6 Gbps = 750 B/s and 1 B/token. t = 1000: egress 750/3000 = 1/4 < compute 1/3 -> bound 1/2,
    # with PD-P (N_p = 1) at 1. t = 0 gives 750/2000 = 3/8 and t = 3000 (all local) 1/4.
    best = search(toy_scenario(link_gbps=6e-6), step_tokens=1000)
    assert (best.split.threshold_tokens, best.n_prefill, best.n_decode) == (1000, 1, 1)
    assert best.rates.prfaas_egress_rps == pytest.approx(0.25)
    assert best.throughput_rps == pytest.approx(0.5)
    assert best.bottleneck is Bottleneck.PRFAAS_EGRESS
    assert best.egress_bytes_per_s == pytest.approx(750.0)  # the link is exactly saturated


def test_toy_decode_needs_three_decoders() -> None:
    weak_decode = DecodeCapacity(max_batch_size=0.25, step_s=0.01)  # 0.25 req/s per decoder
    scenario = toy_scenario(pd=dataclasses.replace(toy_scenario().pd, decode=weak_decode), num_pd=4)
    best = search(scenario, step_tokens=1000)
    # t = 1000: prefill bound 2/3 (PrfaaS) with N_p = 1; N_d = 3 decodes 0.75, N_d = 2 only 0.5.
    assert (best.split.threshold_tokens, best.n_prefill, best.n_decode) == (1000, 1, 3)
    assert best.throughput_rps == pytest.approx(2 / 3)
    assert evaluate(scenario, best.split, 1, 2, 2).throughput_rps == pytest.approx(0.5)


def test_decode_plateau_tie_break_prefers_eq7_balance() -> None:
    # Lengths {1000, 2000, 3000}, both prefill pools 2 ms/token, one 0.28 req/s decoder (N_p = N_d = 1).
    # t = 1000: bounds (0.3, 1.5, 0.28); t = 2000: (0.5, 0.5, 0.28). Both give exactly 0.28; t = 2000
    # balances Eq. 7 (residual 0), so it wins although t = 1000 comes first.
    base = toy_scenario()
    scenario = toy_scenario(
        prfaas=dataclasses.replace(base.prfaas, prefill=QuadraticPrefillTime(0.0, 2e-3, 0.0)),
        pd=dataclasses.replace(base.pd, decode=DecodeCapacity(max_batch_size=0.28, step_s=0.01)),
        lengths=EmpiricalLengths.of([1000, 2000, 3000]),
    )
    at_1000 = evaluate(scenario, split_at(scenario.lengths, 1000), 1, 1, 1)
    best = search(scenario, step_tokens=1000)
    assert at_1000.throughput_rps == best.throughput_rps == pytest.approx(0.28)
    assert (best.split.threshold_tokens, best.n_prefill, best.n_decode) == (2000, 1, 1)
    assert best.bottleneck is Bottleneck.PD_DECODE
    assert prefill_balance_residual_rps(best.rates) == pytest.approx(0.0)


def test_threshold_grid() -> None:
    assert list(threshold_grid(toy_scenario(), 1000)) == [0, 1000, 2000, 3000]
    assert list(threshold_grid(toy_scenario(), 700)) == [0, 700, 1400, 2100, 2800, 3500]
    with pytest.raises(ValueError, match=">= 1 token"):
        threshold_grid(toy_scenario(), 0)
    with pytest.raises(ValueError, match="use a larger step"):
        threshold_grid(paper_scenario(), 1)


def test_scenario_validation_messages() -> None:
    with pytest.raises(ValueError, match="num_pd must be >= 1"):
        toy_scenario(num_pd=0)
    with pytest.raises(ValueError, match="link_gbps must be > 0"):
        toy_scenario(link_gbps=-1.0)
    with pytest.raises(ValueError, match="needs a decode capacity"):
        toy_scenario(pd=toy_scenario().prfaas)


def test_bounds_are_monotone_in_threshold() -> None:
    """§3.4.2: Theta_prfaas/p rises with t (p falls faster than T(l_long) grows); Theta_pd-p/(1-p) falls."""
    points = threshold_sweep(paper_scenario(), 3, range(1_000, 125_001, 1_000))
    prfaas_bounds = [pt.rates.prfaas_bound_rps for pt in points]
    pd_bounds = [pt.rates.pd_prefill_bound_rps for pt in points]
    assert all(b > a for a, b in itertools.pairwise(prfaas_bounds))
    assert all(b < a for a, b in itertools.pairwise(pd_bounds))


def test_figure5a_split_sweep(paper_plan: Plan) -> None:
    points = split_sweep(paper_scenario(), paper_plan.threshold_tokens)
    assert [pt.n_prefill for pt in points] == list(range(1, 8))
    assert [pt.n_decode for pt in points] == list(range(7, 0, -1))
    best = max(points, key=lambda pt: pt.throughput_rps)
    assert (best.n_prefill, best.n_decode) == (3, 5)
    # The prefill-bound curve rises, the decode-bound curve falls; they cross between N_p = 3 and 4.
    assert points[2].rates.prefill_bound_rps < points[2].rates.pd_decode_rps
    assert points[3].rates.prefill_bound_rps > points[3].rates.pd_decode_rps


def test_table6_reproduction(paper_plan: Plan) -> None:
    ref = PAPER_TABLE6
    assert paper_plan.threshold_tokens == pytest.approx(ref.threshold_tokens, rel=0.02)
    assert (paper_plan.n_prfaas, paper_plan.n_prefill, paper_plan.n_decode) == (4, 3, 5)
    assert paper_plan.throughput_rps == pytest.approx(ref.throughput_rps, rel=0.02)
    assert paper_plan.homogeneous_rps == pytest.approx(ref.homogeneous_rps, rel=0.02)
    assert paper_plan.naive_rps == pytest.approx(ref.naive_rps, rel=0.02)
    assert paper_plan.offload_fraction == pytest.approx(ref.offload_fraction, rel=0.02)
    assert paper_plan.egress_gbps == pytest.approx(ref.egress_gbps, rel=0.10)
    assert paper_plan.bottleneck == "prfaas-compute"


def test_table6_stage_rates(paper_plan: Plan) -> None:
    assert paper_plan.theta_prfaas_rps == pytest.approx(1.61, rel=0.02)
    assert paper_plan.theta_pd_prefill_rps == pytest.approx(1.64, rel=0.02)
    assert paper_plan.theta_pd_decode_rps == pytest.approx(3.91, rel=0.02)
    assert paper_plan.long_mean_tokens == pytest.approx(45_000, rel=0.01)


def test_reference_reimplementation_numbers(paper_plan: Plan) -> None:
    # reference §2.5: a faithful reimplementation gives 3.25 / 2.11 / 2.47 / 12.5 Gbps
    assert round(paper_plan.throughput_rps, 2) == 3.25
    assert round(paper_plan.homogeneous_rps, 2) == 2.11
    assert round(paper_plan.naive_rps, 2) == 2.47
    assert round(paper_plan.egress_gbps, 1) == 12.5


def test_optimum_nearly_satisfies_eqs_7_and_8(paper_plan: Plan) -> None:
    scenario = paper_scenario()
    best = evaluate(scenario, split_at(scenario.lengths, paper_plan.threshold_tokens), 4, 3, 5)
    residual = prefill_balance_residual_rps(best.rates)
    assert residual is not None and abs(residual) < 0.02 * best.throughput_rps
    prfaas, pd_prefill = best.rates.prfaas_rps, best.rates.pd_prefill_rps
    assert prfaas is not None and pd_prefill is not None
    assert prfaas + pd_prefill < best.rates.pd_decode_rps  # Eq. 8 holds only approximately (integer N_d)


def test_homogeneous_split_is_9_3() -> None:
    point = homogeneous_baseline(paper_scenario())
    assert (point.n_prfaas, point.n_prefill, point.n_decode) == (0, 9, 3)
    assert point.split.offload_fraction == 0.0


def test_more_bandwidth_never_hurts() -> None:
    throughputs = [search(paper_scenario(), 1000).throughput_rps]
    for gbps in (1.0, 5.0, 20.0):
        point = search(dataclasses.replace(paper_scenario(), link_gbps=gbps), 1000)
        assert point.egress_gbps <= gbps * (1 + 1e-9)
        throughputs.insert(-1, point.throughput_rps)
    assert throughputs == sorted(throughputs)


def test_summary_has_exactly_the_json_keys(paper_plan: Plan) -> None:
    summary = paper_plan.summary()
    assert tuple(summary) == SUMMARY_KEYS
    assert isinstance(summary["threshold_tokens"], int)
    assert not any(isinstance(v, float) and math.isnan(v) for v in summary.values())
