"""Value objects of the SDK: what goes into a request and what comes back. No gRPC types leak out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from prfaas.engine.validation import DEFAULT_MAX_NEW_TOKENS

RouteName = Literal["prfaas", "local", "unspecified"]
FinishReason = Literal["stop", "length"]


@dataclass(frozen=True, slots=True)
class Sampling:
    """How to pick tokens; validated here with the same rules as the server.

    `temperature=0` is greedy decoding; equal `seed`s give equal sampled tokens.
    """

    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop_token_ids: Sequence[int] = field(default_factory=tuple)
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if any(t < 0 for t in self.stop_token_ids):
            raise ValueError(f"stop_token_ids must be >= 0, got {list(self.stop_token_ids)}")
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))


@dataclass(frozen=True, slots=True)
class RouteInfo:
    """Where and how the request was prefilled: `route` "prfaas" (offloaded cross-datacenter) or "local"."""

    route: RouteName
    reason: str
    cached_tokens: int
    kv_bytes: int
    ttft_s: float
    prompt_tokens: int
    prefill_worker: str
    decode_worker: str
    # TTFT split, seconds: routing, prefill queueing, prefill compute, the KV transfer left after the compute
    # (what layer-wise streaming did not hide) and decode admission up to the first token.
    route_s: float = 0.0
    queue_s: float = 0.0
    prefill_s: float = 0.0
    transfer_tail_s: float = 0.0
    decode_admit_s: float = 0.0


@dataclass(frozen=True, slots=True)
class GenerationChunk:
    """One streamed piece: new tokens, their text, `route` on the first chunk, `finish_reason` on the last."""

    token_ids: tuple[int, ...]
    text: str
    finish_reason: FinishReason | None = None
    route: RouteInfo | None = None


@dataclass(frozen=True, slots=True)
class GenerationResult:
    """A whole generation, collected from its stream; `elapsed_s` is the client-side wall time."""

    request_id: str
    token_ids: tuple[int, ...]
    text: str
    finish_reason: FinishReason | None
    route: RouteInfo | None
    elapsed_s: float
