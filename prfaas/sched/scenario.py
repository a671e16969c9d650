"""A planning scenario: the two clusters, the link between them, and the workload (§3.4.2, §4.1)."""

from __future__ import annotations

from dataclasses import dataclass

from prfaas.sched.profile import DecodeCapacity, HardwareProfile, LinearKvSize, QuadraticPrefillTime
from prfaas.sched.throughput import gbps_to_bytes_per_s
from prfaas.sched.workload import EmpiricalLengths, TruncatedLogNormal

LengthModel = TruncatedLogNormal | EmpiricalLengths

MIB_BYTES = 2**20
KTOKENS = 1000  # the paper's "K" in fitted curves and thresholds (19.4K = 19,400 tokens)


@dataclass(frozen=True, slots=True)
class Scenario:
    """Fixed inputs of the planner: hardware, instance counts, link, mean output length, length law.

    ``num_pd`` is the local PD cluster size ``N_p + N_d``, which the planner splits; ``num_prfaas`` is
    fixed. ``pd.decode`` must be set because PD-D decodes every request.
    """

    prfaas: HardwareProfile
    pd: HardwareProfile
    num_prfaas: int
    num_pd: int
    link_gbps: float
    output_tokens: float
    lengths: LengthModel

    def __post_init__(self) -> None:
        _require(self.num_prfaas >= 1, f"num_prfaas must be >= 1 instance, got {self.num_prfaas}")
        _require(self.num_pd >= 1, f"num_pd must be >= 1 instance, got {self.num_pd}")
        _require(self.link_gbps > 0, f"link_gbps must be > 0 Gbps, got {self.link_gbps}")
        _require(self.output_tokens > 0, f"output_tokens must be > 0, got {self.output_tokens}")
        _require(
            self.pd.decode is not None,
            f"PD hardware profile {self.pd.name!r} needs a decode capacity (max_batch_size, step_s)",
        )

    @property
    def link_bytes_per_s(self) -> float:
        return gbps_to_bytes_per_s(self.link_gbps)

    @property
    def pd_decode(self) -> DecodeCapacity:
        assert self.pd.decode is not None  # checked in __post_init__
        return self.pd.decode


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def paper_h200() -> HardwareProfile:
    """8xH200 PrfaaS instance for the 1T KDA:MLA = 3:1 model, fitted to Table 5 (reference §2.5).

    ``T(l) = 0.389 + 0.04206 l + 9.94e-5 l**2`` s and ``S_kv(l) = 172 MiB + 16.74 MiB * l``,
    with l in K = 1000 tokens.
    """
    return HardwareProfile(
        name="8xH200",
        prefill=QuadraticPrefillTime.from_ktokens(0.389, 0.04206, 9.94e-5, ktoken=KTOKENS),
        kv=_paper_kv(),
    )


def paper_h20() -> HardwareProfile:
    """8xH20 PD instance, back-solved from Table 6 (reference §2.5).

    Prefill ``T(l) = 0.386 + 0.1413 l`` s (l in K=1000 tokens). Decode sustains 0.78 req/s per instance
    at ``L_out = 1024``: with ``T_decode = 25 ms`` (the 40 tok/s SLO), Eq. 5 gives
    ``BS_max = 0.78 * 0.025 * 1024 = 19.968``.
    """
    decode_step_s = 0.025
    return HardwareProfile(
        name="8xH20",
        prefill=QuadraticPrefillTime.from_ktokens(0.386, 0.1413, 0.0, ktoken=KTOKENS),
        kv=_paper_kv(),
        decode=DecodeCapacity(max_batch_size=0.78 * decode_step_s * 1024, step_s=decode_step_s),
    )


def _paper_kv() -> LinearKvSize:
    return LinearKvSize(fixed_bytes=172 * MIB_BYTES, bytes_per_token=16.74 * MIB_BYTES / KTOKENS)


def paper_workload() -> TruncatedLogNormal:
    """§4.1: ``ln L ~ N(9.90, 1.00)`` truncated to [128, 128K] with 128K = 131,072 tokens (mean ~27.5K)."""
    return TruncatedLogNormal(mu=9.90, sigma=1.00, lo_tokens=128, hi_tokens=128 * 1024)


def paper_scenario() -> Scenario:
    """The §4 case study: 4 H200 PrfaaS instances, 8 H20 PD instances, ~100 Gbps, ``L_out = 1024``."""
    return Scenario(
        prfaas=paper_h200(),
        pd=paper_h20(),
        num_prfaas=4,
        num_pd=8,
        link_gbps=100.0,
        output_tokens=1024.0,
        lengths=paper_workload(),
    )
