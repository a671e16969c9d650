"""Multi-head latent attention as in Kimi Linear: NoPE, the cache holds the compressed latent plus
the shared key part per token (`kv_lora_rank + qk_rope_head_dim` values).

Prefill expands the cached latents into per-head keys and values and runs causal SDPA. Decode uses
the absorbed form: queries are projected into latent space once, so attention reads the cached
latents directly and never materialises per-head keys for the whole context.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prfaas.model.config import ModelConfig
from prfaas.model.layers import RMSNorm

# The latent norms use a fixed epsilon, not config.rms_norm_eps (as in the reference implementation).
LATENT_NORM_EPS = 1e-6


class MlaAttention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        hidden, h = cfg.hidden_size, cfg.num_attention_heads
        self.num_heads = h
        self.nope, self.rope, self.v_dim = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
        self.rank = cfg.kv_lora_rank
        self.scale = cfg.qk_head_dim**-0.5
        self.q_proj: nn.Linear | None = None
        self.q_a_proj: nn.Linear | None = None
        self.q_a_layernorm: RMSNorm | None = None
        self.q_b_proj: nn.Linear | None = None
        if cfg.q_lora_rank is None:
            self.q_proj = nn.Linear(hidden, h * cfg.qk_head_dim, bias=False)
        else:
            self.q_a_proj = nn.Linear(hidden, cfg.q_lora_rank, bias=False)
            self.q_a_layernorm = RMSNorm(cfg.q_lora_rank, LATENT_NORM_EPS)
            self.q_b_proj = nn.Linear(cfg.q_lora_rank, h * cfg.qk_head_dim, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(hidden, self.rank + self.rope, bias=False)
        self.kv_a_layernorm = RMSNorm(self.rank, LATENT_NORM_EPS)
        self.kv_b_proj = nn.Linear(self.rank, h * (self.nope + self.v_dim), bias=False)
        self.o_proj = nn.Linear(h * self.v_dim, hidden, bias=False)

    def queries(self, x: Tensor) -> Tensor:
        """[N, hidden] -> [N, H, nope + rope]."""
        if self.q_proj is not None:
            q = self.q_proj(x)
        else:
            assert self.q_a_proj is not None and self.q_a_layernorm is not None and self.q_b_proj is not None
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        return q.view(x.shape[0], self.num_heads, -1)

    def latents(self, x: Tensor) -> Tensor:
        """[N, hidden] -> the cached entry per token [N, rank + rope]: normed latent | shared key part."""
        c, k_rot = self.kv_a_proj_with_mqa(x).split([self.rank, self.rope], dim=-1)
        return torch.cat([self.kv_a_layernorm(c), k_rot], dim=-1)

    def prefill(self, x: Tensor, context: Tensor, start: int) -> Tensor:
        """x [T, hidden] holds tokens start..start+T-1; context [start+T, rank+rope] all cached entries."""
        t, total = x.shape[0], context.shape[0]
        q = self.queries(x).transpose(0, 1)  # [H, T, nope+rope]
        c, k_rot = context.split([self.rank, self.rope], dim=-1)
        kv = self.kv_b_proj(c).view(total, self.num_heads, -1).transpose(0, 1)  # [H, L, nope+v]
        k_nope, v = kv.split([self.nope, self.v_dim], dim=-1)
        k = torch.cat([k_nope, k_rot.unsqueeze(0).expand(self.num_heads, -1, -1)], dim=-1)
        if start == 0:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
        else:
            allowed = torch.arange(total).unsqueeze(0) <= torch.arange(start, total).unsqueeze(1)
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=self.scale)
        return self.o_proj(o.transpose(0, 1).reshape(t, -1))

    def decode(self, x: Tensor, context: Tensor, valid: Tensor) -> Tensor:
        """x [B, hidden]; context [B, L, rank+rope] padded cache; valid [B, L] marks real entries."""
        q = self.queries(x)  # [B, H, nope+rope]
        q_nope, q_rot = q.split([self.nope, self.rope], dim=-1)
        w = self.kv_b_proj.weight.view(self.num_heads, self.nope + self.v_dim, self.rank)
        w_k, w_v = w.split([self.nope, self.v_dim], dim=1)  # [H, nope, R], [H, v, R]
        q_lat = torch.einsum("bhn,hnr->bhr", q_nope, w_k)  # [B, H, R]
        c, k_rot = context.split([self.rank, self.rope], dim=-1)
        scores = torch.bmm(q_lat, c.transpose(1, 2)) + torch.bmm(q_rot, k_rot.transpose(1, 2))  # [B, H, L]
        scores = (scores * self.scale).masked_fill(~valid.unsqueeze(1), float("-inf"))
        probs = torch.softmax(scores.float(), dim=-1).to(x.dtype)
        o_lat = torch.bmm(probs, c)  # [B, H, R]
        o = torch.einsum("bhr,hvr->bhv", o_lat, w_v)  # [B, H, v]
        return self.o_proj(o.reshape(x.shape[0], -1))
