"""What the engine needs from a model: its config and the two forward entry points.

`KimiLinearModel` is the real one; `prfaas.model.mock.MockModel` follows a hardware profile instead
of computing. Both read and write the same `HybridCache`, so the engine, the wire format and the
prefix cache do not know which one runs.
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor

from prfaas.kv.cache import HybridCache
from prfaas.model.config import ModelConfig
from prfaas.model.kimi_linear import DecodeInput, LayerHook, PrefillInput, PrefillOutput


class ModelRunner(Protocol):
    config: ModelConfig

    def prefill(self, cache: HybridCache, inp: PrefillInput, hook: LayerHook | None = None) -> PrefillOutput: ...

    def decode(self, cache: HybridCache, inp: DecodeInput) -> Tensor: ...
