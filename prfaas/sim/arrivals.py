"""Request arrival streams for the simulator: Poisson with rate steps (steady traffic and bursts) over a length
distribution, or a Mooncake trace replay whose ``hash_ids`` give real prefix reuse.

All streams are generated up front from a seeded ``numpy`` generator, so every policy sees the same requests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from prfaas.sched.trace import MooncakeTrace, TraceRequest
from prfaas.sched.workload import TruncatedLogNormal


@dataclass(frozen=True, slots=True)
class Arrival:
    """One request: when it arrives, its prompt and output lengths, and its chained full-block keys."""

    at_s: float
    prompt_tokens: int
    output_tokens: int
    block_keys: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class RateStep:
    """From ``at_s`` on, requests arrive at ``rate_rps`` (a burst is a step up and a step back down)."""

    at_s: float
    rate_rps: float


def rate_segments(base_rps: float, steps: Sequence[RateStep], duration_s: float) -> list[tuple[float, float, float]]:
    """``(start_s, end_s, rate_rps)`` pieces covering ``[0, duration_s)``; later steps override earlier ones."""
    points = [RateStep(0.0, base_rps), *sorted(steps, key=lambda s: s.at_s)]
    segments = []
    for step, nxt in zip(points, [*points[1:], RateStep(duration_s, 0.0)], strict=True):
        start, end = max(step.at_s, 0.0), min(nxt.at_s, duration_s)
        if end > start:
            segments.append((start, end, step.rate_rps))
    return segments


def poisson_times(rng: np.random.Generator, segments: Sequence[tuple[float, float, float]]) -> list[float]:
    """Arrival instants of a Poisson process with piecewise-constant rate (memoryless: restart per piece)."""
    times: list[float] = []
    for start, end, rate in segments:
        if rate <= 0:
            continue
        t = start
        while True:
            gaps = rng.exponential(1.0 / rate, size=max(16, int(rate * (end - t) * 1.2) + 16))
            stamps = t + np.cumsum(gaps)
            inside = stamps[stamps < end]
            times.extend(inside.tolist())
            if len(inside) < len(stamps):
                break
            t = float(stamps[-1])
    return times


def poisson_arrivals(
    rng: np.random.Generator,
    lengths: TruncatedLogNormal,
    output_tokens: int,
    segments: Sequence[tuple[float, float, float]],
) -> list[Arrival]:
    """Poisson arrivals with lengths drawn i.i.d. from ``lengths`` (the paper's §4.1 workload) and no prefix
    reuse."""
    times = poisson_times(rng, segments)
    prompts = np.maximum(np.rint(lengths.sample(rng, len(times))), 1).astype(int)
    return [Arrival(t, int(n), output_tokens) for t, n in zip(times, prompts, strict=True)]


def chain_keys(hash_ids: Sequence[int], full_blocks: int) -> tuple[int, ...]:
    """Prefix-chained keys of the first ``full_blocks`` blocks: equal key <=> equal prefix up to that block."""
    keys, parent = [], 0
    for hash_id in hash_ids[:full_blocks]:
        parent = hash((parent, hash_id))
        keys.append(parent)
    return tuple(keys)


def trace_arrivals(trace: MooncakeTrace, duration_s: float, rate_rps: float | None = None) -> list[Arrival]:
    """Replay ``trace`` from its first timestamp; ``rate_rps`` rescales time so that the mean arrival rate is
    ``rate_rps`` (None: the recorded times). Requests after ``duration_s`` are dropped."""
    ordered = sorted(trace.requests, key=lambda r: r.timestamp_ms)
    t0 = ordered[0].timestamp_ms / 1000.0
    span_s = ordered[-1].timestamp_ms / 1000.0 - t0
    scale = 1.0 if rate_rps is None or span_s <= 0 else len(ordered) / (span_s * rate_rps)
    arrivals = (_trace_arrival(r, (r.timestamp_ms / 1000.0 - t0) * scale, trace.block_tokens) for r in ordered)
    return [a for a in arrivals if a.at_s < duration_s]


def _trace_arrival(req: TraceRequest, at_s: float, block_tokens: int) -> Arrival:
    keys = chain_keys(req.hash_ids, req.input_tokens // block_tokens)
    return Arrival(at_s, max(req.input_tokens, 1), max(req.output_tokens, 1), keys)
