"""Hardware profiles for the throughput model (§3.4.1, Table 5).

A profile answers three questions about one kind of 8-GPU instance running one model:
how long a prefill of ``l`` uncached tokens takes (``T_prefill(l)``), how many bytes of KV
that prefill produces (``S_kv(l)``), and how many requests per second its decoder sustains
(``BS_max`` and ``T_decode``).

Every length model is a piecewise polynomial in the token count, exposed through ``pieces()``,
so that the workload module can take exact expectations ``E[f(L) | a < L <= b]`` over any
length distribution from its partial moments.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

_INF = math.inf


@dataclass(frozen=True, slots=True)
class PolynomialPiece:
    """``f(l) = sum_k coeffs[k] * l**k`` for ``lo_tokens < l <= hi_tokens``."""

    lo_tokens: float
    hi_tokens: float
    coeffs: tuple[float, ...]

    def value(self, length_tokens: float) -> float:
        return sum(c * length_tokens**k for k, c in enumerate(self.coeffs))


class LengthFunction(Protocol):
    """A function of the uncached length that is piecewise polynomial (seconds or bytes)."""

    def pieces(self) -> tuple[PolynomialPiece, ...]: ...


@dataclass(frozen=True, slots=True)
class QuadraticPrefillTime:
    """``T_prefill(l) = a_s + b_s_per_token * l + c_s_per_token2 * l**2``.

    Attention makes prefill quadratic in ``l``; the linear term is the MLP/projection work.
    """

    a_s: float
    b_s_per_token: float
    c_s_per_token2: float

    @classmethod
    def from_ktokens(cls, a_s: float, b_s: float, c_s: float, ktoken: int = 1000) -> QuadraticPrefillTime:
        """Build from a fit whose length unit is ``ktoken`` tokens (the paper fits use K = 1000)."""
        return cls(a_s, b_s / ktoken, c_s / ktoken**2)

    def seconds(self, length_tokens: float) -> float:
        return self.a_s + self.b_s_per_token * length_tokens + self.c_s_per_token2 * length_tokens**2

    def pieces(self) -> tuple[PolynomialPiece, ...]:
        return (PolynomialPiece(-_INF, _INF, (self.a_s, self.b_s_per_token, self.c_s_per_token2)),)


@dataclass(frozen=True, slots=True)
class PiecewiseLinear:
    """Linear interpolation through ``(tokens, value)`` points, linear extrapolation past the ends."""

    points: tuple[tuple[float, float], ...]

    def __post_init__(self) -> None:
        if len(self.points) < 2:
            raise ValueError(f"a piecewise-linear table needs at least 2 points, got {len(self.points)}")
        xs = [x for x, _ in self.points]
        if any(b <= a for a, b in itertools.pairwise(xs)):
            raise ValueError(f"table lengths must be strictly increasing, got {xs}")

    def value(self, length_tokens: float) -> float:
        return next(p for p in self.pieces() if length_tokens <= p.hi_tokens).value(length_tokens)

    def pieces(self) -> tuple[PolynomialPiece, ...]:
        segments = list(zip(self.points, self.points[1:], strict=False))
        pieces = []
        for i, ((x0, y0), (x1, y1)) in enumerate(segments):
            slope = (y1 - y0) / (x1 - x0)
            lo = -_INF if i == 0 else x0
            hi = _INF if i == len(segments) - 1 else x1
            pieces.append(PolynomialPiece(lo, hi, (y0 - slope * x0, slope)))
        return tuple(pieces)


@dataclass(frozen=True, slots=True)
class TablePrefillTime:
    """``T_prefill(l)`` interpolated from measured ``(tokens, seconds)`` points."""

    table: PiecewiseLinear

    @classmethod
    def from_points(cls, points: Sequence[tuple[float, float]]) -> TablePrefillTime:
        return cls(PiecewiseLinear(tuple((float(x), float(y)) for x, y in points)))

    def seconds(self, length_tokens: float) -> float:
        return self.table.value(length_tokens)

    def pieces(self) -> tuple[PolynomialPiece, ...]:
        return self.table.pieces()


@dataclass(frozen=True, slots=True)
class LinearKvSize:
    """``S_kv(l) = fixed_bytes + bytes_per_token * l``.

    For a hybrid model ``fixed_bytes`` is the request-level linear-attention state and
    ``bytes_per_token`` the full-attention KV of every full layer (§2.2).
    """

    fixed_bytes: float
    bytes_per_token: float

    def bytes(self, length_tokens: float) -> float:
        return self.fixed_bytes + self.bytes_per_token * length_tokens

    def pieces(self) -> tuple[PolynomialPiece, ...]:
        return (PolynomialPiece(-_INF, _INF, (self.fixed_bytes, self.bytes_per_token)),)


@dataclass(frozen=True, slots=True)
class TableKvSize:
    """``S_kv(l)`` interpolated from measured ``(tokens, bytes)`` points."""

    table: PiecewiseLinear

    @classmethod
    def from_points(cls, points: Sequence[tuple[float, float]]) -> TableKvSize:
        return cls(PiecewiseLinear(tuple((float(x), float(y)) for x, y in points)))

    def bytes(self, length_tokens: float) -> float:
        return self.table.value(length_tokens)

    def pieces(self) -> tuple[PolynomialPiece, ...]:
        return self.table.pieces()


PrefillTime = QuadraticPrefillTime | TablePrefillTime
KvSize = LinearKvSize | TableKvSize


@dataclass(frozen=True, slots=True)
class DecodeCapacity:
    """Decode capacity at the SLO: ``BS_max`` concurrent requests, one token each per ``T_decode``.

    ``max_batch_size`` is a float because it is often back-solved from a measured rate.
    """

    max_batch_size: float
    step_s: float

    def __post_init__(self) -> None:
        if self.max_batch_size <= 0 or self.step_s <= 0:
            raise ValueError(
                f"decode capacity needs max_batch_size > 0 and step_s > 0, got {self.max_batch_size} and {self.step_s}"
            )

    @property
    def tokens_per_s(self) -> float:
        return self.max_batch_size / self.step_s


@dataclass(frozen=True, slots=True)
class HardwareProfile:
    """One instance type (e.g. 8xH200) serving one model. ``decode`` is None for prefill-only chips."""

    name: str
    prefill: PrefillTime
    kv: KvSize
    decode: DecodeCapacity | None = None

    def prefill_s(self, length_tokens: float) -> float:
        return self.prefill.seconds(length_tokens)

    def kv_bytes(self, length_tokens: float) -> float:
        return self.kv.bytes(length_tokens)
