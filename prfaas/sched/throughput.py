"""The analytical throughput model of PrfaaS-PD (§2.2, §2.3, §3.4; Eqs. 1-8).

The system is a converging pipeline: a fraction ``p`` of requests is prefilled on the PrfaaS cluster
(KV over Ethernet), the rest on PD-P (KV over RDMA), and both streams feed the PD-D decoders. Each
stage has a throughput in requests per second; the sustainable arrival rate is the tightest of them
once each prefill stage is divided by the share of traffic it sees (Eq. 6).

Units: rates in req/s (``*_rps``), times in seconds, sizes in bytes, bandwidth in bytes/s unless the
name says ``gbps`` (10**9 bits/s).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

BITS_PER_BYTE = 8
BITS_PER_GBIT = 1e9


def gbps_to_bytes_per_s(gbps: float) -> float:
    return gbps * BITS_PER_GBIT / BITS_PER_BYTE


def bytes_per_s_to_gbps(bytes_per_s: float) -> float:
    return bytes_per_s * BITS_PER_BYTE / BITS_PER_GBIT


def kv_throughput_bytes_per_s(kv_bytes: float, prefill_s: float) -> float:
    """Eq. 1: ``Phi_kv(l) = S_kv(l) / T_prefill(l)``, the KV one instance emits while prefilling."""
    return kv_bytes / prefill_s


def required_egress_bytes_per_s(num_instances: float, mean_kv_bytes: float, mean_prefill_s: float) -> float:
    """Eq. 2: ``B_out = (N/P) * E[S_kv] / E[T_prefill]`` for a prefill cluster running flat out.

    ``num_instances`` is ``N/P`` (GPUs over GPUs per instance). Passing ``S_kv(L_avg)`` and
    ``T_prefill(L_avg)`` gives the paper's approximation ``(N/P) * Phi_kv(L_avg)``.
    """
    return num_instances * kv_throughput_bytes_per_s(mean_kv_bytes, mean_prefill_s)


def prfaas_compute_rps(num_prfaas: int, long_prefill_s: float) -> float:
    """Eq. 3, compute term: ``N_prfaas / T_prefill(l_long)``."""
    return num_prfaas / long_prefill_s


def prfaas_egress_rps(egress_bytes_per_s: float, long_kv_bytes: float) -> float:
    """Eq. 3, bandwidth term: ``B_out / S_kv(l_long)``."""
    return egress_bytes_per_s / long_kv_bytes


def prfaas_rps(num_prfaas: int, long_prefill_s: float, egress_bytes_per_s: float, long_kv_bytes: float) -> float:
    """Eq. 3: ``Theta_prfaas = min(N_prfaas / T_prefill(l_long), B_out / S_kv(l_long))``.

    Layer-wise pipelining overlaps compute with the KV transfer, so the slower of the two binds.
    """
    return min(prfaas_compute_rps(num_prfaas, long_prefill_s), prfaas_egress_rps(egress_bytes_per_s, long_kv_bytes))


def pd_prefill_rps(num_prefill: int, short_prefill_s: float) -> float:
    """Eq. 4: ``Theta_pd-p = N_p / T_prefill(l_short)``; intra-cluster RDMA never binds."""
    return num_prefill / short_prefill_s


def pd_decode_rps(num_decode: int, max_batch_size: float, decode_step_s: float, output_tokens: float) -> float:
    """Eq. 5: ``Theta_pd-d = N_d * BS_max / (T_decode * L_out)``."""
    return num_decode * max_batch_size / (decode_step_s * output_tokens)


class Bottleneck(StrEnum):
    """The term of Eq. 6 that sets ``Lambda_max`` (Eq. 3's two terms told apart)."""

    PRFAAS_COMPUTE = "prfaas-compute"
    PRFAAS_EGRESS = "prfaas-egress"
    PD_PREFILL = "pd-prefill"
    PD_DECODE = "pd-decode"


@dataclass(frozen=True, slots=True)
class StageRates:
    """The three stage throughputs of Eqs. 3-5 (req/s) and the offload fraction ``p``.

    A prefill stage that receives no traffic (``p == 0`` for PrfaaS, ``p == 1`` for PD-P) has no
    representative length, so its rate is None and it drops out of Eq. 6.
    """

    offload_fraction: float
    prfaas_compute_rps: float | None
    prfaas_egress_rps: float | None
    pd_prefill_rps: float | None
    pd_decode_rps: float

    @property
    def prfaas_rps(self) -> float | None:
        """Eq. 3."""
        if self.prfaas_compute_rps is None or self.prfaas_egress_rps is None:
            return None
        return min(self.prfaas_compute_rps, self.prfaas_egress_rps)

    @property
    def prfaas_bound_rps(self) -> float:
        """``Theta_prfaas / p``: the arrival rate at which PrfaaS saturates (inf if it gets no traffic)."""
        rate = self.prfaas_rps
        return math.inf if rate is None else rate / self.offload_fraction

    @property
    def pd_prefill_bound_rps(self) -> float:
        """``Theta_pd-p / (1 - p)``: the arrival rate at which PD-P saturates (inf if it gets no traffic)."""
        rate = self.pd_prefill_rps
        return math.inf if rate is None else rate / (1.0 - self.offload_fraction)

    @property
    def prefill_bound_rps(self) -> float:
        """The prefill side of Eq. 6: ``min(Theta_prfaas / p, Theta_pd-p / (1 - p))``."""
        return min(self.prfaas_bound_rps, self.pd_prefill_bound_rps)


def max_throughput_rps(rates: StageRates) -> float:
    """Eq. 6: ``Lambda_max = min(Theta_prfaas / p, Theta_pd-p / (1 - p), Theta_pd-d)``."""
    return min(rates.prefill_bound_rps, rates.pd_decode_rps)


def bottleneck(rates: StageRates) -> Bottleneck:
    """The Eq. 6 term that attains ``Lambda_max``; ties go to the earlier stage of the pipeline."""
    prfaas_bottleneck = (
        Bottleneck.PRFAAS_EGRESS
        if rates.prfaas_egress_rps is not None
        and rates.prfaas_compute_rps is not None
        and rates.prfaas_egress_rps < rates.prfaas_compute_rps
        else Bottleneck.PRFAAS_COMPUTE
    )
    candidates = (
        (rates.prfaas_bound_rps, prfaas_bottleneck),
        (rates.pd_prefill_bound_rps, Bottleneck.PD_PREFILL),
        (rates.pd_decode_rps, Bottleneck.PD_DECODE),
    )
    return min(candidates, key=lambda c: c[0])[1]


def prefill_balance_residual_rps(rates: StageRates) -> float | None:
    """Eq. 7 residual: ``Theta_prfaas / p - Theta_pd-p / (1 - p)`` (zero when both prefill paths saturate
    together); None when one path gets no traffic."""
    if rates.prfaas_rps is None or rates.pd_prefill_rps is None:
        return None
    return rates.prfaas_bound_rps - rates.pd_prefill_bound_rps


def producer_consumer_residual_rps(rates: StageRates) -> float:
    """Eq. 8 residual: ``Theta_prfaas + Theta_pd-p - Theta_pd-d`` (a stage with no traffic produces 0)."""
    return (rates.prfaas_rps or 0.0) + (rates.pd_prefill_rps or 0.0) - rates.pd_decode_rps
