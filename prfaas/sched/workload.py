"""Distributions of the uncached input length ``L`` and the threshold split they induce (§3.4.1).

Routing sends a request to PrfaaS iff ``L > t`` (§3.3), so the model needs, for each threshold:

- ``p(t) = P(L > t)``, the offload fraction;
- ``l_long = E[L | L > t]`` and ``l_short = E[L | L <= t]``, the representative lengths.

**Modelling assumption (§3.4.1, followed exactly):** every PrfaaS request is represented by the
single length ``l_long`` and every PD-P request by ``l_short``; the stage rates use
``T_prefill(l_long)``, not ``E[T_prefill(L) | L > t]``. Because ``T_prefill`` is convex, Jensen gives
``T_prefill(l_long) <= E[T_prefill(L) | L > t]``, i.e. the paper's model is mildly optimistic about
prefill capacity. ``expected_above`` / ``expected_at_or_below`` compute the exact conditional
expectations for comparison; the throughput model does not use them.

A distribution only has to provide the survival function and partial moments
``E[L**k ; a < L <= b]``; every conditional mean, and the expectation of any piecewise-polynomial
length function (prefill time, KV size), follows exactly from those.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from prfaas.sched.profile import LengthFunction

_SQRT2 = math.sqrt(2.0)


class LengthDistribution(Protocol):
    """The uncached input length ``L`` in tokens."""

    @property
    def min_tokens(self) -> float: ...

    @property
    def max_tokens(self) -> float: ...

    def survival(self, threshold_tokens: float) -> float:
        """``P(L > threshold_tokens)``."""
        ...

    def partial_moment(self, order: int, lo_tokens: float, hi_tokens: float) -> float:
        """``E[L**order ; lo_tokens < L <= hi_tokens]`` (the expectation restricted to the interval)."""
        ...


def _norm_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / _SQRT2)


@dataclass(frozen=True, slots=True)
class TruncatedLogNormal:
    """``ln L ~ N(mu, sigma**2)`` conditioned on ``lo_tokens <= L <= hi_tokens`` (the §4.1 workload).

    With ``z(x) = (ln x - mu) / sigma`` and ``Z = Phi(z(hi)) - Phi(z(lo))`` the closed forms are
    ``P(L > t) = (Phi(z(hi)) - Phi(z(t))) / Z`` and
    ``E[L**k ; a < L <= b] = exp(k mu + k**2 sigma**2 / 2) (Phi(z(b) - k sigma) - Phi(z(a) - k sigma)) / Z``.
    """

    mu: float
    sigma: float
    lo_tokens: float
    hi_tokens: float

    def __post_init__(self) -> None:
        if self.sigma <= 0:
            raise ValueError(f"log-normal sigma must be > 0, got {self.sigma}")
        if not 0 < self.lo_tokens < self.hi_tokens:
            raise ValueError(f"need 0 < lo_tokens < hi_tokens, got [{self.lo_tokens}, {self.hi_tokens}]")

    @property
    def min_tokens(self) -> float:
        return self.lo_tokens

    @property
    def max_tokens(self) -> float:
        return self.hi_tokens

    def _z(self, length_tokens: float) -> float:
        return (math.log(length_tokens) - self.mu) / self.sigma

    def _mass(self, shift: float, lo_tokens: float, hi_tokens: float) -> float:
        return _norm_cdf(self._z(hi_tokens) - shift) - _norm_cdf(self._z(lo_tokens) - shift)

    def survival(self, threshold_tokens: float) -> float:
        return self.partial_moment(0, threshold_tokens, self.hi_tokens)

    def partial_moment(self, order: int, lo_tokens: float, hi_tokens: float) -> float:
        a, b = max(lo_tokens, self.lo_tokens), min(hi_tokens, self.hi_tokens)
        if b <= a:
            return 0.0
        k = order
        scale = math.exp(k * self.mu + 0.5 * (k * self.sigma) ** 2)
        shift = k * self.sigma
        return scale * self._mass(shift, a, b) / self._mass(0.0, self.lo_tokens, self.hi_tokens)

    def sample(self, rng: np.random.Generator, size: int) -> npt.NDArray[np.float64]:
        """Draw ``size`` lengths by rejection from the untruncated log-normal."""
        drawn: list[npt.NDArray[np.float64]] = []
        remaining = size
        while remaining > 0:
            x = rng.lognormal(self.mu, self.sigma, max(2 * remaining, 64))
            kept = x[(x >= self.lo_tokens) & (x <= self.hi_tokens)][:remaining]
            drawn.append(kept)
            remaining -= len(kept)
        return np.concatenate(drawn) if drawn else np.empty(0)


@dataclass(frozen=True, slots=True)
class EmpiricalLengths:
    """The empirical distribution of observed uncached lengths (each sample has weight ``1/n``)."""

    lengths_tokens: tuple[float, ...]
    _sorted: npt.NDArray[np.float64] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.lengths_tokens:
            raise ValueError("an empirical length distribution needs at least one sample")
        if min(self.lengths_tokens) < 0:
            raise ValueError("lengths must be >= 0 tokens")
        object.__setattr__(self, "_sorted", np.sort(np.asarray(self.lengths_tokens, dtype=np.float64)))

    @classmethod
    def of(cls, lengths_tokens: Iterable[float]) -> EmpiricalLengths:
        return cls(tuple(float(x) for x in lengths_tokens))

    @property
    def min_tokens(self) -> float:
        return float(self._sorted[0])

    @property
    def max_tokens(self) -> float:
        return float(self._sorted[-1])

    def survival(self, threshold_tokens: float) -> float:
        return self.partial_moment(0, threshold_tokens, math.inf)

    def partial_moment(self, order: int, lo_tokens: float, hi_tokens: float) -> float:
        i, j = np.searchsorted(self._sorted, [lo_tokens, hi_tokens], side="right")
        if j <= i:
            return 0.0
        return float(np.sum(self._sorted[i:j] ** order)) / len(self._sorted)


@dataclass(frozen=True, slots=True)
class LengthSplit:
    """What threshold ``t`` does to the workload: ``p``, ``l_long``, ``l_short`` (Table 4).

    ``long_mean_tokens`` is None when no request is offloaded (``p == 0``) and
    ``short_mean_tokens`` is None when every request is (``p == 1``).
    """

    threshold_tokens: float
    offload_fraction: float
    long_mean_tokens: float | None
    short_mean_tokens: float | None


def _conditional(dist: LengthDistribution, order: int, lo: float, hi: float) -> float | None:
    mass = dist.partial_moment(0, lo, hi)
    return None if mass <= 0.0 else dist.partial_moment(order, lo, hi) / mass


def _clamp(value: float | None, lo: float, hi: float) -> float | None:
    return None if value is None else min(max(value, lo), hi)


def mean_tokens(dist: LengthDistribution) -> float:
    """``E[L]``."""
    return dist.partial_moment(1, -math.inf, math.inf) / dist.partial_moment(0, -math.inf, math.inf)


def mean_above(dist: LengthDistribution, threshold_tokens: float) -> float | None:
    """``l_long = E[L | L > t]``; None when ``P(L > t) = 0``."""
    value = _conditional(dist, 1, threshold_tokens, math.inf)
    return _clamp(value, max(threshold_tokens, dist.min_tokens), dist.max_tokens)


def mean_at_or_below(dist: LengthDistribution, threshold_tokens: float) -> float | None:
    """``l_short = E[L | L <= t]``; None when ``P(L <= t) = 0``."""
    value = _conditional(dist, 1, -math.inf, threshold_tokens)
    return _clamp(value, dist.min_tokens, min(threshold_tokens, dist.max_tokens))


def _expected(dist: LengthDistribution, fn: LengthFunction, lo: float, hi: float) -> float | None:
    mass = dist.partial_moment(0, lo, hi)
    if mass <= 0.0:
        return None
    total = 0.0
    for piece in fn.pieces():
        a, b = max(lo, piece.lo_tokens), min(hi, piece.hi_tokens)
        total += sum(c * dist.partial_moment(k, a, b) for k, c in enumerate(piece.coeffs))
    return total / mass


def expected_above(dist: LengthDistribution, fn: LengthFunction, threshold_tokens: float) -> float | None:
    """``E[f(L) | L > t]`` exactly, for a piecewise-polynomial ``f`` (Eqs. 3-6 use ``f(l_long)`` instead)."""
    return _expected(dist, fn, threshold_tokens, math.inf)


def expected_at_or_below(dist: LengthDistribution, fn: LengthFunction, threshold_tokens: float) -> float | None:
    """``E[f(L) | L <= t]`` exactly, for a piecewise-polynomial ``f``."""
    return _expected(dist, fn, -math.inf, threshold_tokens)


def split_at(dist: LengthDistribution, threshold_tokens: float) -> LengthSplit:
    """Route ``L > t`` to PrfaaS and ``L <= t`` to PD-P (§3.3) and summarise both sides (Table 4)."""
    p = min(max(dist.survival(threshold_tokens), 0.0), 1.0)
    long_mean = mean_above(dist, threshold_tokens) if p > 0.0 else None
    short_mean = mean_at_or_below(dist, threshold_tokens) if p < 1.0 else None
    return LengthSplit(threshold_tokens, p, long_mean, short_mean)
