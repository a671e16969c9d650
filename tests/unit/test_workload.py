"""Length distributions: closed forms, Monte-Carlo cross-checks, and exact small cases."""

import math

import numpy as np
import pytest

from prfaas.sched.profile import LinearKvSize, QuadraticPrefillTime, TableKvSize, TablePrefillTime
from prfaas.sched.scenario import paper_h200, paper_workload
from prfaas.sched.workload import (
    EmpiricalLengths,
    TruncatedLogNormal,
    expected_above,
    expected_at_or_below,
    mean_above,
    mean_at_or_below,
    mean_tokens,
    split_at,
)

PAPER = paper_workload()


@pytest.fixture(scope="module")
def paper_sample() -> np.ndarray:
    return PAPER.sample(np.random.default_rng(20260416), 400_000)


def test_untruncated_limit_matches_lognormal_moments() -> None:
    dist = TruncatedLogNormal(mu=2.0, sigma=0.5, lo_tokens=1e-12, hi_tokens=1e12)
    assert mean_tokens(dist) == pytest.approx(math.exp(2.0 + 0.125), rel=1e-12)
    assert dist.partial_moment(2, 0, math.inf) == pytest.approx(math.exp(4.0 + 0.5), rel=1e-12)
    assert dist.survival(math.exp(2.0)) == pytest.approx(0.5, abs=1e-12)


def test_truncation_bounds_are_exact() -> None:
    assert PAPER.survival(0) == 1.0
    assert PAPER.survival(127.9) == 1.0
    assert PAPER.survival(131_072) == 0.0
    assert PAPER.survival(1e9) == 0.0


def test_paper_workload_matches_reference_numbers() -> None:
    # reference §2.5: mean 27.5K; at t = 19.4K: p = 0.496, l_long = 45.0K, l_short = 10.2K
    assert mean_tokens(PAPER) == pytest.approx(27_500, rel=0.005)
    assert PAPER.survival(19_400) == pytest.approx(0.496, abs=0.001)
    assert mean_above(PAPER, 19_400) == pytest.approx(45_000, rel=0.005)
    assert mean_at_or_below(PAPER, 19_400) == pytest.approx(10_200, rel=0.005)


def test_sample_respects_bounds(paper_sample: np.ndarray) -> None:
    assert len(paper_sample) == 400_000
    assert paper_sample.min() >= 128 and paper_sample.max() <= 131_072


@pytest.mark.parametrize("t", [500.0, 5_000.0, 19_400.0, 60_000.0, 120_000.0])
def test_closed_forms_match_monte_carlo(paper_sample: np.ndarray, t: float) -> None:
    above, below = paper_sample[paper_sample > t], paper_sample[paper_sample <= t]
    assert PAPER.survival(t) == pytest.approx(len(above) / len(paper_sample), abs=0.003)
    assert mean_above(PAPER, t) == pytest.approx(above.mean(), rel=0.01)
    assert mean_at_or_below(PAPER, t) == pytest.approx(below.mean(), rel=0.01)


@pytest.mark.parametrize("t", [5_000.0, 19_400.0, 60_000.0])
def test_expected_prefill_time_matches_monte_carlo(paper_sample: np.ndarray, t: float) -> None:
    prefill = paper_h200().prefill
    assert isinstance(prefill, QuadraticPrefillTime)
    seconds = prefill.a_s + prefill.b_s_per_token * paper_sample + prefill.c_s_per_token2 * paper_sample**2
    above, below = seconds[paper_sample > t], seconds[paper_sample <= t]
    assert expected_above(PAPER, prefill, t) == pytest.approx(above.mean(), rel=0.01)
    assert expected_at_or_below(PAPER, prefill, t) == pytest.approx(below.mean(), rel=0.01)


def test_jensen_gap_of_the_representative_length_assumption() -> None:
    prefill = paper_h200().prefill
    l_long = mean_above(PAPER, 19_400)
    assert l_long is not None
    exact = expected_above(PAPER, prefill, 19_400)
    assert exact is not None and exact > prefill.seconds(l_long)


def test_empirical_hand_values() -> None:
    dist = EmpiricalLengths.of([4, 1, 3, 2])
    assert (dist.min_tokens, dist.max_tokens) == (1.0, 4.0)
    assert dist.survival(2) == 0.5
    assert dist.survival(0) == 1.0 and dist.survival(4) == 0.0
    assert mean_tokens(dist) == 2.5
    assert mean_above(dist, 2) == 3.5
    assert mean_at_or_below(dist, 2) == 1.5
    assert dist.partial_moment(2, 1, 3) == (4 + 9) / 4


def test_empirical_expectation_of_quadratic() -> None:
    dist = EmpiricalLengths.of([1, 2, 3, 4])
    f = QuadraticPrefillTime(1.0, 1.0, 1.0)  # f(3) = 13, f(4) = 21
    assert expected_above(dist, f, 2) == 17.0
    assert expected_at_or_below(dist, f, 2) == (3 + 7) / 2


def test_piecewise_table_expectation_equals_sample_average() -> None:
    table = TablePrefillTime.from_points([(100, 1.0), (200, 3.0), (400, 4.0)])
    samples = [50, 150, 250, 399, 500, 700]
    dist = EmpiricalLengths.of(samples)
    direct = np.mean([table.seconds(x) for x in samples if x > 120])
    assert expected_above(dist, table, 120) == pytest.approx(direct)


def test_piecewise_table_values() -> None:
    table = TablePrefillTime.from_points([(100, 1.0), (200, 3.0), (400, 4.0)])
    assert table.seconds(100) == 1.0
    assert table.seconds(150) == 2.0
    assert table.seconds(300) == 3.5
    assert table.seconds(50) == 0.0  # extrapolates the first segment
    assert table.seconds(600) == 5.0  # and the last one


def test_table_needs_increasing_points() -> None:
    with pytest.raises(ValueError, match="strictly increasing"):
        TablePrefillTime.from_points([(100, 1.0), (100, 2.0)])
    with pytest.raises(ValueError, match="at least 2 points"):
        TableKvSize.from_points([(100, 1.0)])


def test_kv_models() -> None:
    assert LinearKvSize(100.0, 2.0).bytes(10) == 120.0
    assert TableKvSize.from_points([(0, 0.0), (10, 50.0)]).bytes(4) == 20.0


def test_lognormal_expectation_of_table_matches_linear_model() -> None:
    linear = LinearKvSize(172.0, 3.0)
    table = TableKvSize.from_points([(0, 172.0), (1000, 3172.0)])
    assert expected_above(PAPER, table, 19_400) == pytest.approx(expected_above(PAPER, linear, 19_400))


def test_split_at_edges() -> None:
    everything = split_at(PAPER, -math.inf)
    assert (everything.offload_fraction, everything.short_mean_tokens) == (1.0, None)
    assert everything.long_mean_tokens == pytest.approx(mean_tokens(PAPER))
    nothing = split_at(PAPER, math.inf)
    assert (nothing.offload_fraction, nothing.long_mean_tokens) == (0.0, None)
    assert nothing.short_mean_tokens == pytest.approx(mean_tokens(PAPER))


def test_tail_means_stay_inside_the_support() -> None:
    for t in (130_000.0, 131_000.0, 131_071.0):
        long_mean = mean_above(PAPER, t)
        assert long_mean is not None and t <= long_mean <= 131_072


def test_invalid_distributions() -> None:
    with pytest.raises(ValueError, match="sigma"):
        TruncatedLogNormal(9.9, 0.0, 128, 1000)
    with pytest.raises(ValueError, match="lo_tokens < hi_tokens"):
        TruncatedLogNormal(9.9, 1.0, 1000, 128)
    with pytest.raises(ValueError, match="at least one sample"):
        EmpiricalLengths.of([])
