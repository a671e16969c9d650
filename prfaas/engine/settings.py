"""An engine's settings, and building the engine from them: the real torch model or the profile-driven mock."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from prfaas.kv.prefix import DEFAULT_BLOCK_SIZE
from prfaas.model.tiny import TINY_NAME

if TYPE_CHECKING:
    from prfaas.engine.engine import Engine, EngineConfig

ENGINE_KINDS = ("real", "mock")


@dataclass(frozen=True)
class EngineSettings:
    """The engine a worker runs (flags `--engine`, `--model`, `--block-size`, ...)."""

    model: str = TINY_NAME
    engine: str = "real"
    block_size: int = DEFAULT_BLOCK_SIZE  # tokens per KV block: every worker and the router must agree
    num_blocks: int = 2048
    max_seqs: int = 32
    max_prefill_tokens: int = 2048
    snapshot_every_blocks: int = 1  # linear-state snapshots every N block boundaries
    threads: int = 1
    mock_role: str = "pd"  # which paper profile the mock follows: "prfaas" (H200) or "pd" (H20)
    time_scale: float = 0.01
    bytes_scale: float = 0.01
    decode_step_scale: float = 1.0  # mock: extra factor on the decode step time (see MockSettings)
    token_scale: int = 1  # mock: paper tokens per mock token (see MockSettings)

    def __post_init__(self) -> None:
        if self.engine not in ENGINE_KINDS:
            raise ValueError(f"engine must be one of {ENGINE_KINDS}, got {self.engine!r}")
        if self.threads < 1:
            raise ValueError("threads must be >= 1")

    def engine_config(self) -> EngineConfig:
        from prfaas.engine.engine import EngineConfig

        return EngineConfig(
            block_size=self.block_size,
            num_blocks=self.num_blocks,
            max_seqs=self.max_seqs,
            max_prefill_tokens=self.max_prefill_tokens,
            snapshot_every_blocks=self.snapshot_every_blocks,
        )


def build_engine(s: EngineSettings) -> Engine:
    import torch

    from prfaas.engine.engine import Engine

    torch.set_num_threads(s.threads)
    if s.engine == "mock":
        from prfaas.model.mock import MockModel, paper_mock

        return Engine(
            MockModel.from_settings(
                paper_mock(s.mock_role, s.time_scale, s.bytes_scale, s.decode_step_scale, s.token_scale)
            ),
            s.engine_config(),
        )
    return Engine.from_pretrained(s.model, s.engine_config())
