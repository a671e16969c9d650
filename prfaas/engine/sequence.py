"""One request's progress through the engine."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import torch
from torch import Tensor

from prfaas.engine.sampling import SamplingParams
from prfaas.kv.migration import StateExporter, StateImporter


class Status(enum.Enum):
    WAITING = "waiting"  # queued, holds no resources
    IMPORTING = "importing"  # receiving state from another engine
    PREFILLING = "prefilling"  # holds blocks and a slot; prompt partly computed
    DECODING = "decoding"
    FINISHED = "finished"


@dataclass(frozen=True, slots=True)
class TokenEvent:
    request_id: str
    token_id: int
    index: int  # position in the output
    finish_reason: str | None  # "stop", "length", "prefill_done", "aborted" or None while running


@dataclass(eq=False, slots=True)
class Sequence:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    salt: bytes = b""
    prefill_only: bool = False
    output_ids: list[int] = field(default_factory=list)
    status: Status = Status.WAITING
    slot: int | None = None
    blocks: list[int] = field(default_factory=list)
    num_computed: int = 0  # tokens whose state is in the cache
    cached_tokens: int = 0  # tokens reused from the prefix cache
    hashes: list[bytes] = field(default_factory=list)  # chained hashes of full blocks, in order
    finish_reason: str | None = None
    exporter: StateExporter | None = None
    importer: StateImporter | None = None

    @property
    def all_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    def block_table(self, num_blocks: int | None = None) -> Tensor:
        blocks = self.blocks if num_blocks is None else self.blocks[:num_blocks]
        return torch.tensor(blocks, dtype=torch.long)
