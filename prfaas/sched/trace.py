"""Mooncake-format request traces (JSONL) and the uncached-length distribution they imply.

Each line is ``{"timestamp": ms, "input_length": tokens, "output_length": tokens, "hash_ids": [...]}``;
``hash_ids[i]`` names the ``i``-th ``block_tokens``-token block of the prompt, and equal ids at the same
position mean a shared prefix (see ``shared/data/mooncake-traces/README.md``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from prfaas.sched.workload import EmpiricalLengths

MOONCAKE_BLOCK_TOKENS = 512


@dataclass(frozen=True, slots=True)
class TraceRequest:
    timestamp_ms: float
    input_tokens: int
    output_tokens: int
    hash_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class MooncakeTrace:
    requests: tuple[TraceRequest, ...]
    block_tokens: int = MOONCAKE_BLOCK_TOKENS

    @property
    def mean_output_tokens(self) -> float:
        return sum(r.output_tokens for r in self.requests) / len(self.requests)

    def input_lengths(self) -> EmpiricalLengths:
        """The full prompt lengths, i.e. the uncached length with no prefix cache at all."""
        return EmpiricalLengths.of(r.input_tokens for r in self.requests)

    def uncached_lengths(self) -> EmpiricalLengths:
        """Incremental prefill lengths behind an unbounded prefix cache, replaying in timestamp order.

        A request hits the longest chain of blocks ``hash_ids[:k]`` that some earlier request produced;
        at least one token is always recomputed (a prefill must produce logits), so the uncached length
        is ``max(1, input_tokens - k * block_tokens)``.
        """
        seen: dict[tuple[int, int], int] = {}
        lengths = [_uncached_tokens(r, seen, self.block_tokens) for r in self._in_arrival_order()]
        return EmpiricalLengths.of(lengths)

    def _in_arrival_order(self) -> list[TraceRequest]:
        return sorted(self.requests, key=lambda r: r.timestamp_ms)


def _uncached_tokens(request: TraceRequest, seen: dict[tuple[int, int], int], block_tokens: int) -> int:
    """Match ``request`` against the block trie ``seen`` (``(parent, hash id) -> node``), then insert it."""
    node, hit_blocks = 0, 0
    for hash_id in request.hash_ids:
        child = seen.get((node, hash_id))
        if child is None:  # a miss creates a fresh node, so every later block misses too
            child = seen[(node, hash_id)] = len(seen) + 1
        else:
            hit_blocks += 1
        node = child
    return max(1, request.input_tokens - hit_blocks * block_tokens)


def parse_mooncake_lines(
    lines: Iterable[str], source: str = "<trace>", block_tokens: int = MOONCAKE_BLOCK_TOKENS
) -> MooncakeTrace:
    requests = [_parse_line(line, source, n) for n, line in enumerate(lines, start=1) if line.strip()]
    if not requests:
        raise ValueError(f"{source}: the trace has no requests")
    if block_tokens < 1:
        raise ValueError(f"{source}: block_tokens must be >= 1, got {block_tokens}")
    return MooncakeTrace(tuple(requests), block_tokens)


def _parse_line(line: str, source: str, line_no: int) -> TraceRequest:
    try:
        record = json.loads(line)
        return TraceRequest(
            timestamp_ms=float(record["timestamp"]),
            input_tokens=int(record["input_length"]),
            output_tokens=int(record["output_length"]),
            hash_ids=tuple(int(h) for h in record.get("hash_ids", ())),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"{source}:{line_no}: not a Mooncake trace record ({exc!r}); each line needs "
            "timestamp, input_length, output_length and hash_ids"
        ) from exc


def load_mooncake_trace(path: str | Path, block_tokens: int = MOONCAKE_BLOCK_TOKENS) -> MooncakeTrace:
    """Read a Mooncake JSONL trace; raises ``OSError``, or ``ValueError`` naming the offending line."""
    with Path(path).open(encoding="utf-8") as f:
        return parse_mooncake_lines(f, source=str(path), block_tokens=block_tokens)
