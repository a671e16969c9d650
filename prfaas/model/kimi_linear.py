"""The Kimi Linear causal LM: embeddings, hybrid decoder layers (KDA or MLA, then MLP or MoE), LM head.

Two entry points over a `HybridCache`:
- `prefill`: one sequence, a chunk of tokens start..end-1, layer by layer, calling a per-layer hook
  after each layer's state for the chunk is final (so KV can stream while later layers compute);
- `decode`: one new token for each of B sequences in a single batched step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import torch
from torch import Tensor, nn

from prfaas.kv.cache import HybridCache
from prfaas.kv.snapshots import LinearSnapshot
from prfaas.kv.spec import LayerSpec
from prfaas.model.config import FULL, SPARSE, ModelConfig
from prfaas.model.kda import KdaAttention
from prfaas.model.layers import MLP, MoE, RMSNorm
from prfaas.model.mla import MlaAttention

LayerHook = Callable[[LayerSpec], None]
KDA_CHUNK = 64


@dataclass(frozen=True, slots=True)
class PrefillInput:
    token_ids: Tensor  # [T] tokens start..start+T-1
    start: int
    block_table: Tensor  # [num_blocks] covering at least start+T tokens
    slot: int  # linear-state slot
    snapshot_every: int | None = None  # take linear snapshots at positions divisible by this


@dataclass(slots=True)
class PrefillOutput:
    last_logits: Tensor  # [vocab] at the chunk's last token
    snapshots: list[tuple[int, LinearSnapshot]] = field(default_factory=list)  # (tokens, snapshot)


@dataclass(frozen=True, slots=True)
class DecodeInput:
    token_ids: Tensor  # [B]
    positions: Tensor  # [B] index of each new token
    block_tables: Tensor  # [B, max_blocks]
    slots: Tensor  # [B]


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, index: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attn: KdaAttention | MlaAttention = (
            MlaAttention(cfg) if cfg.layer_types[index] == FULL else KdaAttention(cfg)
        )
        self.mlp: MLP | MoE = (
            MoE(cfg) if cfg.mlp_layer_types[index] == SPARSE else MLP(cfg.hidden_size, cfg.intermediate_size)
        )

    def ffn(self, x: Tensor) -> Tensor:
        return x + self.mlp(self.post_attention_layernorm(x))


class KimiLinearModel(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList([DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    @property
    def decoder_layers(self) -> list[DecoderLayer]:
        return cast(list[DecoderLayer], list(self.layers))

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    @torch.inference_mode()
    def prefill(self, cache: HybridCache, inp: PrefillInput, hook: LayerHook | None = None) -> PrefillOutput:
        chunk = math.gcd(KDA_CHUNK, cache.spec.block_size)
        end = inp.start + inp.token_ids.shape[0]
        x = self.embed_tokens(inp.token_ids)  # [T, hidden]
        linear_chunks: list[tuple[Tensor, Tensor]] = []
        for spec, layer in zip(cache.spec.layers, self.decoder_layers, strict=True):
            h = layer.input_layernorm(x)
            if isinstance(layer.attn, MlaAttention):
                cache.write_full(spec.slot, inp.block_table, inp.start, layer.attn.latents(h))
                context = cache.read_full(spec.slot, inp.block_table, 0, end)
                x = x + layer.attn.prefill(h, context, inp.start)
            else:
                rec, conv = cache.recurrent[spec.slot][inp.slot], cache.conv[spec.slot][inp.slot]
                res = layer.attn.prefill(h, rec, conv, chunk, inp.snapshot_every is not None)
                x = x + res.output
                if res.chunk_states is not None and res.chunk_conv_tails is not None:
                    linear_chunks.append((res.chunk_states, res.chunk_conv_tails))
            x = layer.ffn(x)
            if hook is not None:
                hook(spec)
        logits = self.lm_head(self.norm(x[-1:]))[0]
        return PrefillOutput(logits.float(), _snapshots(linear_chunks, inp, chunk))

    @torch.inference_mode()
    def decode(self, cache: HybridCache, inp: DecodeInput) -> Tensor:
        """Returns logits [B, vocab] for the next token of every sequence."""
        bs = cache.spec.block_size
        flat = inp.block_tables.gather(1, (inp.positions // bs).unsqueeze(1)).squeeze(1) * bs + inp.positions % bs
        span = inp.block_tables.shape[1] * bs
        valid = torch.arange(span).unsqueeze(0) <= inp.positions.unsqueeze(1)  # [B, span]
        x = self.embed_tokens(inp.token_ids)  # [B, hidden]
        for spec, layer in zip(cache.spec.layers, self.decoder_layers, strict=True):
            h = layer.input_layernorm(x)
            if isinstance(layer.attn, MlaAttention):
                cache.write_full_batch(spec.slot, flat, layer.attn.latents(h))
                context = cache.gather_full_batch(spec.slot, inp.block_tables)
                x = x + layer.attn.decode(h, context, valid)
            else:
                rec = cache.recurrent[spec.slot][inp.slots]
                conv = cache.conv[spec.slot][inp.slots]
                x = x + layer.attn.decode(h, rec, conv)
                cache.recurrent[spec.slot][inp.slots] = rec
                cache.conv[spec.slot][inp.slots] = conv
            x = layer.ffn(x)
        return self.lm_head(self.norm(x)).float()


def _snapshots(
    linear_chunks: list[tuple[Tensor, Tensor]], inp: PrefillInput, chunk: int
) -> list[tuple[int, LinearSnapshot]]:
    """Assemble per-layer KDA chunk states into snapshots at the requested boundaries."""
    if inp.snapshot_every is None:
        return []
    if not linear_chunks:  # no linear layers: every boundary is trivially resumable
        return []
    out = []
    for i in range(linear_chunks[0][0].shape[0]):
        tokens = inp.start + (i + 1) * chunk
        if tokens % inp.snapshot_every == 0:
            rec = torch.stack([states[i] for states, _ in linear_chunks])
            conv = torch.stack([tails[i] for _, tails in linear_chunks])
            out.append((tokens, LinearSnapshot(rec, conv)))
    return out
