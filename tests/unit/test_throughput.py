"""Eqs. 1-8 of the throughput model against hand-computed values."""

import math

import pytest

from prfaas.sched.throughput import (
    Bottleneck,
    StageRates,
    bottleneck,
    bytes_per_s_to_gbps,
    gbps_to_bytes_per_s,
    kv_throughput_bytes_per_s,
    max_throughput_rps,
    pd_decode_rps,
    pd_prefill_rps,
    prefill_balance_residual_rps,
    prfaas_compute_rps,
    prfaas_egress_rps,
    prfaas_rps,
    producer_consumer_residual_rps,
    required_egress_bytes_per_s,
)

MIB = 2**20


def rates(
    p: float,
    compute: float | None = 2.0,
    egress: float | None = 10.0,
    prefill: float | None = 1.5,
    decode: float = 10.0,
) -> StageRates:
    return StageRates(p, compute, egress, prefill, decode)


def test_unit_conversions() -> None:
    assert gbps_to_bytes_per_s(100.0) == 12.5e9
    assert bytes_per_s_to_gbps(12.5e9) == 100.0


def test_eq1_kv_throughput() -> None:
    assert kv_throughput_bytes_per_s(1000.0, 2.0) == 500.0


@pytest.mark.parametrize(
    ("kv_mib", "prefill_s", "paper_gbps"),
    [(308.9, 0.72, 3.59), (701.3, 1.84, 3.19), (2316.3, 7.40, 2.62)],
)
def test_eq1_reproduces_table5(kv_mib: float, prefill_s: float, paper_gbps: float) -> None:
    gbps = bytes_per_s_to_gbps(kv_throughput_bytes_per_s(kv_mib * MIB, prefill_s))
    assert gbps == pytest.approx(paper_gbps, abs=0.01)


def test_eq2_required_egress() -> None:
    assert required_egress_bytes_per_s(4, 100.0, 2.0) == 200.0
    # §2.3: 64 Ring-2.5-1T instances at Phi_kv(32K) = 2.59 Gbps need ~166 Gbps.
    per_instance = gbps_to_bytes_per_s(2.59)
    assert bytes_per_s_to_gbps(required_egress_bytes_per_s(64, per_instance, 1.0)) == pytest.approx(165.76)


def test_eq3_compute_bound() -> None:
    assert prfaas_compute_rps(4, 2.0) == 2.0
    assert prfaas_egress_rps(100.0, 25.0) == 4.0
    assert prfaas_rps(4, 2.0, 100.0, 25.0) == 2.0


def test_eq3_bandwidth_bound() -> None:
    assert prfaas_rps(4, 2.0, 30.0, 20.0) == 1.5


def test_eq4_pd_prefill() -> None:
    assert pd_prefill_rps(3, 1.5) == 2.0


def test_eq5_pd_decode() -> None:
    assert pd_decode_rps(5, 20.0, 0.025, 1000.0) == pytest.approx(4.0)


def test_eq5_paper_h20_decode_is_078_per_instance() -> None:
    assert pd_decode_rps(5, 0.78 * 0.025 * 1024, 0.025, 1024.0) == pytest.approx(3.90)


def test_eq6_takes_the_tightest_scaled_term() -> None:
    r = rates(0.5)  # bounds: 2/0.5 = 4, 1.5/0.5 = 3, decode 10
    assert r.prfaas_rps == 2.0
    assert r.prfaas_bound_rps == 4.0
    assert r.pd_prefill_bound_rps == 3.0
    assert max_throughput_rps(r) == 3.0
    assert bottleneck(r) is Bottleneck.PD_PREFILL


def test_eq6_decode_bound() -> None:
    r = rates(0.25, compute=3.0, prefill=6.0, decode=5.0)  # 12, 8, 5
    assert max_throughput_rps(r) == 5.0
    assert bottleneck(r) is Bottleneck.PD_DECODE


def test_eq6_egress_bottleneck_is_named() -> None:
    r = rates(0.5, compute=2.0, egress=1.0, prefill=5.0)  # prfaas = 1 -> bound 2
    assert max_throughput_rps(r) == 2.0
    assert bottleneck(r) is Bottleneck.PRFAAS_EGRESS


def test_eq6_no_offload_drops_the_prfaas_term() -> None:
    r = rates(0.0, compute=None, egress=None, prefill=1.5)
    assert r.prfaas_rps is None
    assert r.prfaas_bound_rps == math.inf
    assert max_throughput_rps(r) == 1.5


def test_eq6_full_offload_drops_the_pd_prefill_term() -> None:
    r = rates(1.0, prefill=None)
    assert r.pd_prefill_bound_rps == math.inf
    assert max_throughput_rps(r) == 2.0
    assert bottleneck(r) is Bottleneck.PRFAAS_COMPUTE


def test_bottleneck_ties_go_upstream() -> None:
    r = rates(0.5, compute=1.5, prefill=1.5, decode=3.0)  # all three terms are 3
    assert bottleneck(r) is Bottleneck.PRFAAS_COMPUTE


def test_eq7_residual() -> None:
    assert prefill_balance_residual_rps(rates(0.5)) == 1.0  # 4 - 3
    assert prefill_balance_residual_rps(rates(1.0, prefill=None)) is None


def test_eq8_residual() -> None:
    assert producer_consumer_residual_rps(rates(0.5)) == -6.5  # 2 + 1.5 - 10
    assert producer_consumer_residual_rps(rates(1.0, prefill=None)) == -8.0
