"""Fitting hardware profiles online from what workers measure (the long timescale re-fits them).

Prefill time is fitted as a + b·l + c·l² and KV size as fixed + per-token·l by least squares over
recent (incremental tokens, seconds, bytes) samples; coefficients are clamped at zero so a noisy
fit never predicts negative time. Decode capacity is the batch size seen with the median step time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from prfaas.sched.profile import DecodeCapacity, HardwareProfile, LinearKvSize, QuadraticPrefillTime


@dataclass(frozen=True, slots=True)
class PrefillSample:
    tokens: int
    seconds: float
    kv_bytes: int


@dataclass(frozen=True, slots=True)
class DecodeSample:
    batch: int
    seconds: float


MIN_DISTINCT_LENGTHS = 3


def fit_prefill(samples: Sequence[PrefillSample]) -> tuple[QuadraticPrefillTime, LinearKvSize] | None:
    """None until the samples span at least three distinct lengths."""
    if len({s.tokens for s in samples}) < MIN_DISTINCT_LENGTHS:
        return None
    lengths = np.array([s.tokens for s in samples], dtype=float)
    c, b, a = np.polyfit(lengths, [s.seconds for s in samples], 2)
    per_token, fixed = np.polyfit(lengths, [s.kv_bytes for s in samples], 1)
    time_fit = QuadraticPrefillTime(max(float(a), 0.0), max(float(b), 0.0), max(float(c), 0.0))
    return time_fit, LinearKvSize(max(float(fixed), 0.0), max(float(per_token), 0.0))


def fit_decode(samples: Sequence[DecodeSample]) -> DecodeCapacity | None:
    if not samples:
        return None
    return DecodeCapacity(float(max(s.batch for s in samples)), float(np.median([s.seconds for s in samples])))


def fit_profile(
    name: str, prefill: Sequence[PrefillSample], decode: Sequence[DecodeSample] = ()
) -> HardwareProfile | None:
    fitted = fit_prefill(prefill)
    if fitted is None:
        return None
    return HardwareProfile(name, fitted[0], fitted[1], fit_decode(decode))
