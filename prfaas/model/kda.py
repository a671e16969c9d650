"""Kimi Delta Attention layer: projections, short causal conv, gates, and the gated output norm.

The recurrence itself lives in `kda_ops`; this module turns hidden states into its inputs and back.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prfaas.model.config import ModelConfig
from prfaas.model.kda_ops import chunk_kda, kda_step
from prfaas.model.layers import GatedRMSNorm


@dataclass(slots=True)
class KdaPrefillResult:
    output: Tensor  # [T, hidden]
    chunk_states: Tensor | None  # [N, H, K, V]: recurrent state after each full KDA chunk
    chunk_conv_tails: Tensor | None  # [N, C, W - 1]: conv tail at the same positions


def l2norm(x: Tensor, eps: float = 1e-6) -> Tensor:
    return x / torch.sqrt((x * x).sum(-1, keepdim=True) + eps)


class KdaAttention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        h, d, hidden = cfg.linear_num_heads, cfg.linear_head_dim, cfg.hidden_size
        self.num_heads, self.head_dim, self.dim = h, d, h * d
        self.kernel = cfg.linear_conv_kernel_dim
        self.q_proj = nn.Linear(hidden, h * d, bias=False)
        self.k_proj = nn.Linear(hidden, h * d, bias=False)
        self.v_proj = nn.Linear(hidden, h * d, bias=False)
        self.conv_weight = nn.Parameter(torch.zeros(3 * h * d, self.kernel))  # depthwise, [C, W]
        self.A_log = nn.Parameter(torch.zeros(h))
        self.dt_bias = nn.Parameter(torch.zeros(h * d))
        self.f_a_proj = nn.Linear(hidden, d, bias=False)
        self.f_b_proj = nn.Linear(d, h * d, bias=False)
        self.b_proj = nn.Linear(hidden, h, bias=False)
        self.g_a_proj = nn.Linear(hidden, d, bias=False)
        self.g_b_proj = nn.Linear(d, h * d, bias=False)
        self.o_norm = GatedRMSNorm(d, cfg.rms_norm_eps)
        self.o_proj = nn.Linear(h * d, hidden, bias=False)

    def _mixed(self, x: Tensor) -> Tensor:
        return torch.cat([self.q_proj(x), self.k_proj(x), self.v_proj(x)], dim=-1)  # [..., C]

    def _gates(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Channel-wise log-decay g = -exp(A_log) * softplus(f + dt_bias) and β = sigmoid(b)."""
        f = self.f_b_proj(self.f_a_proj(x)).float() + self.dt_bias.float()
        f = f.view(*x.shape[:-1], self.num_heads, self.head_dim)
        g = -torch.exp(self.A_log.float()).unsqueeze(-1) * F.softplus(f)
        beta = torch.sigmoid(self.b_proj(x).float())
        return g, beta

    def _split_qkv(self, conv_out: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        shape = (*conv_out.shape[:-1], self.num_heads, self.head_dim)
        q, k, v = conv_out.split(self.dim, dim=-1)
        return l2norm(q.float().view(shape)), l2norm(k.float().view(shape)), v.view(shape)

    def _out(self, o: Tensor, x: Tensor) -> Tensor:
        gate = self.g_b_proj(self.g_a_proj(x)).view(*x.shape[:-1], self.num_heads, self.head_dim)
        o = self.o_norm(o, gate).reshape(*x.shape[:-1], self.dim)
        return self.o_proj(o)

    def prefill(
        self, x: Tensor, rec: Tensor, conv: Tensor, chunk_size: int, want_chunk_states: bool
    ) -> KdaPrefillResult:
        """One sequence, x [T, hidden]; rec [H, K, V] and conv [C, W-1] are updated in place."""
        t = x.shape[0]
        conv_in = torch.cat([conv.t().to(x.dtype), self._mixed(x)], dim=0)  # [W-1+T, C]
        conv_out = F.conv1d(conv_in.t().unsqueeze(0), self.conv_weight.unsqueeze(1), groups=conv_in.shape[1])
        conv_out = F.silu(conv_out.squeeze(0).t())  # [T, C]
        q, k, v = self._split_qkv(conv_out)
        g, beta = self._gates(x)
        o, final, states = chunk_kda(
            q.unsqueeze(0),
            k.unsqueeze(0),
            v.unsqueeze(0),
            g.unsqueeze(0),
            beta.unsqueeze(0),
            initial_state=rec.unsqueeze(0),
            chunk_size=chunk_size,
            return_chunk_states=want_chunk_states,
        )
        rec.copy_(final[0])
        conv.copy_(conv_in[t:].t())
        tails = None
        if states is not None:
            n = states.shape[1]
            w1 = self.kernel - 1
            ends = [(i + 1) * chunk_size for i in range(n)]
            tails = torch.stack([conv_in[e : e + w1].t() for e in ends]) if n else conv.new_empty(0)
            states = states[0]
        return KdaPrefillResult(self._out(o[0].to(x.dtype), x), states, tails)

    def decode(self, x: Tensor, rec: Tensor, conv: Tensor) -> Tensor:
        """A batch of single tokens, x [B, hidden]; rec [B, H, K, V] and conv [B, C, W-1] updated in place."""
        window = torch.cat([conv.to(x.dtype), self._mixed(x).unsqueeze(-1)], dim=-1)  # [B, C, W]
        conv_out = F.silu((window * self.conv_weight).sum(-1))  # [B, C]
        conv.copy_(window[..., 1:])
        q, k, v = self._split_qkv(conv_out)
        g, beta = self._gates(x)
        o = kda_step(q, k, v, g, beta, rec)
        return self._out(o.to(x.dtype), x)
