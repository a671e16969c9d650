"""Throughput-optimal PrfaaS-PD configuration by 2-D grid search (§3.4.2, §4.2), plus the two baselines.

Decision variables: the routing threshold ``t`` (which fixes ``p``, ``l_long``, ``l_short``) and the
local split ``N_p + N_d = num_pd``. The optimum sits where both prefill paths saturate together
(Eq. 7) and the producers balance the decoders (Eq. 8); with integer instance counts those hold only
approximately, so we search exhaustively instead of solving them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from prfaas.sched.scenario import Scenario, paper_scenario
from prfaas.sched.throughput import (
    Bottleneck,
    StageRates,
    bottleneck,
    bytes_per_s_to_gbps,
    max_throughput_rps,
    pd_decode_rps,
    pd_prefill_rps,
    prefill_balance_residual_rps,
    prfaas_compute_rps,
    prfaas_egress_rps,
)
from prfaas.sched.workload import LengthSplit, split_at

__all__ = [
    "DEFAULT_T_STEP_TOKENS",
    "PAPER_TABLE6",
    "SUMMARY_KEYS",
    "OperatingPoint",
    "Plan",
    "Scenario",
    "evaluate",
    "homogeneous_baseline",
    "naive_baseline",
    "paper_scenario",
    "plan",
    "search",
    "split_sweep",
    "threshold_grid",
    "threshold_sweep",
]

DEFAULT_T_STEP_TOKENS = 100
MAX_GRID_ROWS = 100_000


@dataclass(frozen=True, slots=True)
class OperatingPoint:
    """One configuration ``(t, N_prfaas, N_p, N_d)`` evaluated by Eqs. 3-6."""

    split: LengthSplit
    n_prfaas: int
    n_prefill: int
    n_decode: int
    rates: StageRates
    throughput_rps: float
    bottleneck: Bottleneck
    egress_bytes_per_s: float

    @property
    def egress_gbps(self) -> float:
        return bytes_per_s_to_gbps(self.egress_bytes_per_s)


def evaluate(scenario: Scenario, split: LengthSplit, n_prfaas: int, n_prefill: int, n_decode: int) -> OperatingPoint:
    """Eqs. 3-6 at one configuration. Egress at ``Lambda_max`` is ``Lambda * p * S_kv(l_long)``."""
    rates = _stage_rates(scenario, split, n_prfaas, n_prefill, n_decode)
    throughput = max_throughput_rps(rates)
    long_len = split.long_mean_tokens
    egress = 0.0 if long_len is None else throughput * split.offload_fraction * scenario.prfaas.kv_bytes(long_len)
    return OperatingPoint(split, n_prfaas, n_prefill, n_decode, rates, throughput, bottleneck(rates), egress)


def _stage_rates(scenario: Scenario, split: LengthSplit, n_prfaas: int, n_prefill: int, n_decode: int) -> StageRates:
    """Eqs. 3-5 at the representative lengths ``l_long`` / ``l_short`` of ``split`` (§3.4.1)."""
    prfaas, pd, decode = scenario.prfaas, scenario.pd, scenario.pd_decode
    compute_rps = egress_rps = prefill_rps = None
    if split.long_mean_tokens is not None:
        compute_rps = prfaas_compute_rps(n_prfaas, prfaas.prefill_s(split.long_mean_tokens))
        egress_rps = prfaas_egress_rps(scenario.link_bytes_per_s, prfaas.kv_bytes(split.long_mean_tokens))
    if split.short_mean_tokens is not None:
        prefill_rps = pd_prefill_rps(n_prefill, pd.prefill_s(split.short_mean_tokens))
    decode_rps = pd_decode_rps(n_decode, decode.max_batch_size, decode.step_s, scenario.output_tokens)
    return StageRates(split.offload_fraction, compute_rps, egress_rps, prefill_rps, decode_rps)


def threshold_grid(scenario: Scenario, step_tokens: int = DEFAULT_T_STEP_TOKENS) -> range:
    """``t = 0, step, 2 step, ...`` up to the first point at or past the longest request (where ``p = 0``)."""
    if step_tokens < 1:
        raise ValueError(f"the threshold step must be >= 1 token, got {step_tokens}")
    rows = math.ceil(scenario.lengths.max_tokens / step_tokens) + 1
    if rows > MAX_GRID_ROWS:
        raise ValueError(
            f"a {step_tokens}-token threshold step over lengths up to {scenario.lengths.max_tokens:,.0f} "
            f"tokens gives {rows:,} grid rows (max {MAX_GRID_ROWS:,}); use a larger step"
        )
    return range(0, rows * step_tokens, step_tokens)


def _rank(point: OperatingPoint) -> tuple[float, float]:
    """Higher ``Lambda_max`` wins; among equals (a decode-bound plateau) the smaller Eq. 7 imbalance."""
    residual = prefill_balance_residual_rps(point.rates)
    return point.throughput_rps, -(math.inf if residual is None else abs(residual))


def _best(points: Iterable[OperatingPoint]) -> OperatingPoint:
    best: OperatingPoint | None = None
    for point in points:
        if best is None or _rank(point) > _rank(best):
            best = point
    assert best is not None, "the search space is never empty"
    return best


def search(scenario: Scenario, step_tokens: int = DEFAULT_T_STEP_TOKENS) -> OperatingPoint:
    """The 2-D grid search of §3.4.2: every ``t`` on the grid x every split ``N_p + N_d = num_pd``.

    For each ``t``: ``p = P(L > t)``, ``l_long = E[L | L > t]``, ``l_short = E[L | L <= t]`` (computed once
    per grid row); for each ``N_p in 0..num_pd``: Eqs. 3-5 give the stage rates and Eq. 6 ``Lambda_max``.
    Keep the highest ``Lambda_max``; ties (a decode-bound plateau) go to the smallest Eq. 7 imbalance,
    then to the smaller ``t`` and ``N_p``. Eqs. 7-8 are not solved directly: with integer instance
    counts they hold only approximately, and exhaustive search (~12K points, ~0.2 s for the paper
    scenario) needs no monotonicity assumption about the profiles.
    """
    n_pd, n_prfaas = scenario.num_pd, scenario.num_prfaas
    return _best(
        evaluate(scenario, split, n_prfaas, n_prefill, n_pd - n_prefill)
        for split in (split_at(scenario.lengths, t) for t in threshold_grid(scenario, step_tokens))
        for n_prefill in range(n_pd + 1)
    )


def homogeneous_baseline(scenario: Scenario) -> OperatingPoint:
    """Homogeneous PD (§4.1): all ``num_prfaas + num_pd`` instances are PD hardware, no PrfaaS (``p = 0``),
    with the best prefill/decode split."""
    total = scenario.num_prfaas + scenario.num_pd
    split = split_at(scenario.lengths, math.inf)
    return _best(evaluate(scenario, split, 0, n_prefill, total - n_prefill) for n_prefill in range(total + 1))


def naive_baseline(scenario: Scenario) -> OperatingPoint:
    """Naive heterogeneous PD (§4.1): every prefill on PrfaaS (``p = 1``, no threshold), every decode on
    the whole PD cluster."""
    split = split_at(scenario.lengths, -math.inf)
    return evaluate(scenario, split, scenario.num_prfaas, 0, scenario.num_pd)


def split_sweep(scenario: Scenario, threshold_tokens: float) -> tuple[OperatingPoint, ...]:
    """Figure 5(a): ``Lambda`` against ``N_p = 1 .. num_pd - 1`` (``N_d = num_pd - N_p``) at a fixed ``t``."""
    split = split_at(scenario.lengths, threshold_tokens)
    n_pd = scenario.num_pd
    counts = range(1, n_pd) if n_pd >= 2 else range(n_pd + 1)
    return tuple(evaluate(scenario, split, scenario.num_prfaas, n_p, n_pd - n_p) for n_p in counts)


def threshold_sweep(
    scenario: Scenario, n_prefill: int, thresholds_tokens: Iterable[float]
) -> tuple[OperatingPoint, ...]:
    """Figure 5(b): the Eq. 6 terms against ``t`` at a fixed split."""
    n_decode = scenario.num_pd - n_prefill
    return tuple(
        evaluate(scenario, split_at(scenario.lengths, t), scenario.num_prfaas, n_prefill, n_decode)
        for t in thresholds_tokens
    )


@dataclass(frozen=True, slots=True)
class Plan:
    """The planner's answer: the optimal PrfaaS-PD configuration and the two baselines' ``Lambda_max``.

    ``theta_*`` are Eqs. 3-5 at the optimum (None for a stage that receives no traffic).
    """

    threshold_tokens: int
    n_prfaas: int
    n_prefill: int
    n_decode: int
    throughput_rps: float
    offload_fraction: float
    egress_gbps: float
    homogeneous_rps: float
    naive_rps: float
    bottleneck: str
    theta_prfaas_rps: float | None
    theta_pd_prefill_rps: float | None
    theta_pd_decode_rps: float
    long_mean_tokens: float | None
    short_mean_tokens: float | None

    @classmethod
    def from_points(cls, best: OperatingPoint, homogeneous: OperatingPoint, naive: OperatingPoint) -> Plan:
        split, rates = best.split, best.rates
        return cls(
            threshold_tokens=int(split.threshold_tokens),
            n_prfaas=best.n_prfaas,
            n_prefill=best.n_prefill,
            n_decode=best.n_decode,
            throughput_rps=best.throughput_rps,
            offload_fraction=split.offload_fraction,
            egress_gbps=best.egress_gbps,
            homogeneous_rps=homogeneous.throughput_rps,
            naive_rps=naive.throughput_rps,
            bottleneck=str(best.bottleneck),
            theta_prfaas_rps=rates.prfaas_rps,
            theta_pd_prefill_rps=rates.pd_prefill_rps,
            theta_pd_decode_rps=rates.pd_decode_rps,
            long_mean_tokens=split.long_mean_tokens,
            short_mean_tokens=split.short_mean_tokens,
        )

    def summary(self) -> dict[str, int | float | str]:
        """The stable, JSON-ready subset (the keys of ``prfaas plan --json``)."""
        return {key: getattr(self, key) for key in SUMMARY_KEYS}


SUMMARY_KEYS = (
    "threshold_tokens",
    "n_prfaas",
    "n_prefill",
    "n_decode",
    "throughput_rps",
    "offload_fraction",
    "egress_gbps",
    "homogeneous_rps",
    "naive_rps",
    "bottleneck",
)


def plan(scenario: Scenario, step_tokens: int = DEFAULT_T_STEP_TOKENS) -> Plan:
    """Search the PrfaaS-PD optimum and evaluate both baselines on the same scenario."""
    return Plan.from_points(search(scenario, step_tokens), homogeneous_baseline(scenario), naive_baseline(scenario))


PAPER_TABLE6 = Plan(
    threshold_tokens=19_400,
    n_prfaas=4,
    n_prefill=3,
    n_decode=5,
    throughput_rps=3.24,
    offload_fraction=0.496,
    egress_gbps=13.0,
    homogeneous_rps=2.11,
    naive_rps=2.45,
    bottleneck=str(Bottleneck.PRFAAS_COMPUTE),
    theta_prfaas_rps=1.61,
    theta_pd_prefill_rps=1.64,
    theta_pd_decode_rps=3.91,
    long_mean_tokens=44_000.0,
    short_mean_tokens=None,
)
"""Table 6 and §4.3 of the paper (PrfaaS-PD column plus the baselines' ``Lambda_max``)."""
