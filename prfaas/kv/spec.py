"""The hybrid state layout, derived once from the model's layer pattern.

Every full-attention (MLA) layer keeps paged KV that grows with tokens: per token, the compressed
latent plus the shared key part. Every linear-attention (KDA) layer keeps a fixed-size state: the
recurrent matrix per head plus the last `W - 1` pre-conv inputs (the conv tail). The cache, the wire
format and the cache pool all read this spec instead of re-deriving the pattern.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from prfaas.model.config import FULL, LINEAR, ModelConfig

LAYOUT_VERSION = 1


@dataclass(frozen=True, slots=True)
class LayerSpec:
    index: int  # position in the model
    kind: str  # FULL or LINEAR
    slot: int  # position among the layers of the same kind


@dataclass(frozen=True, slots=True)
class HybridSpec:
    layers: tuple[LayerSpec, ...]
    block_size: int
    dtype: torch.dtype
    full_token_dim: int  # cached values per token per full layer
    linear_state_shape: tuple[int, int, int]  # [H, K, V], float32
    linear_conv_shape: tuple[int, int]  # [conv channels, W - 1], model dtype
    model_fingerprint: str

    @classmethod
    def from_config(cls, cfg: ModelConfig, block_size: int, dtype: torch.dtype = torch.float32) -> HybridSpec:
        if block_size <= 0:
            raise ValueError(f"block_size must be positive, got {block_size}")
        counters = {FULL: 0, LINEAR: 0}
        layers = []
        for index, kind in enumerate(cfg.layer_types):
            layers.append(LayerSpec(index, kind, counters[kind]))
            counters[kind] += 1
        h, d = cfg.linear_num_heads, cfg.linear_head_dim
        return cls(
            layers=tuple(layers),
            block_size=block_size,
            dtype=dtype,
            full_token_dim=cfg.mla_cache_dim,
            linear_state_shape=(h, d, d),
            linear_conv_shape=(3 * h * d, cfg.linear_conv_kernel_dim - 1),
            model_fingerprint=cfg.fingerprint(),
        )

    @property
    def full_layers(self) -> tuple[LayerSpec, ...]:
        return tuple(layer for layer in self.layers if layer.kind == FULL)

    @property
    def linear_layers(self) -> tuple[LayerSpec, ...]:
        return tuple(layer for layer in self.layers if layer.kind == LINEAR)

    @property
    def full_bytes_per_token(self) -> int:
        """KV bytes one token adds across all full-attention layers."""
        return len(self.full_layers) * self.full_token_dim * _itemsize(self.dtype)

    @property
    def linear_state_bytes(self) -> int:
        """Bytes of the fixed-size state across all linear layers (recurrent fp32 + conv tail)."""
        h, k, v = self.linear_state_shape
        c, w = self.linear_conv_shape
        per_layer = h * k * v * 4 + c * w * _itemsize(self.dtype)
        return len(self.linear_layers) * per_layer

    def state_bytes(self, num_tokens: int) -> int:
        """Bytes needed to resume a sequence of `num_tokens` from nothing (S_kv(l) in the paper)."""
        return self.full_bytes_per_token * num_tokens + self.linear_state_bytes

    def fingerprint(self) -> str:
        """Model config hash + dtype + layout version + block size: both ends of a transfer must agree."""
        blob = f"{self.model_fingerprint}|{self.dtype}|v{LAYOUT_VERSION}|bs{self.block_size}"
        return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()
