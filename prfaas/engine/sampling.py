"""Sampling parameters and token selection.

Sampled tokens draw from a generator seeded by (request seed, position of the token in the sequence), so a
token's choice depends only on the logits and its position: batched, alone, after a transfer to another
engine, or continued elsewhere from prompt + the tokens so far (a decode failover), the same request with
the same seed produces the same tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from prfaas.engine.validation import DEFAULT_MAX_NEW_TOKENS

MIN_TEMPERATURE = 1e-5


@dataclass(frozen=True, slots=True)
class SamplingParams:
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int = 0
    stop_token_ids: tuple[int, ...] = field(default_factory=tuple)
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        """Temperatures below MIN_TEMPERATURE are greedy: logits divided by them overflow float32 (inf/NaN
        probabilities), and the distribution is one-hot at that point anyway."""
        return self.temperature < MIN_TEMPERATURE


def sample(logits: Tensor, params: SamplingParams, index: int) -> int:
    """Pick the token at sequence position `index` (prompt tokens included) from logits [vocab]."""
    if params.greedy:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    if params.top_p < 1.0:
        probs = _top_p(probs, params.top_p)
    gen = torch.Generator().manual_seed((params.seed * 1_000_003 + index) & 0x7FFF_FFFF_FFFF_FFFF)
    return int(torch.multinomial(probs, 1, generator=gen))


def _top_p(probs: Tensor, top_p: float) -> Tensor:
    """Keep the smallest set of most likely tokens whose mass reaches top_p."""
    sorted_probs, order = probs.sort(descending=True)
    before = sorted_probs.cumsum(-1) - sorted_probs
    sorted_probs = sorted_probs.masked_fill(before >= top_p, 0.0)
    return torch.zeros_like(probs).scatter_(-1, order, sorted_probs)


def sample_batch(logits: Tensor, params: list[SamplingParams], indices: list[int]) -> list[int]:
    """One token per row of logits [B, vocab]; greedy rows share one argmax."""
    greedy = logits.argmax(-1).tolist()
    return [g if p.greedy else sample(row, p, i) for g, p, i, row in zip(greedy, params, indices, logits, strict=True)]
