"""Building blocks shared by every Kimi Linear layer: RMSNorm, the SwiGLU MLP and the MoE block."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prfaas.model.config import ModelConfig


class RMSNorm(nn.Module):
    """RMSNorm computed in float32, cast back to the input dtype before the weight is applied."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class GatedRMSNorm(nn.Module):
    """Per-head RMSNorm with a sigmoid output gate (KDA's `o_norm`), all in float32."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor, gate: Tensor) -> Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight.float() * x32 * torch.sigmoid(gate.float())).to(x.dtype)


class MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class MoE(nn.Module):
    """Routed experts with a sigmoid router, score-correction bias and grouped top-k, plus shared experts."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        e, h, i = cfg.num_local_experts, cfg.hidden_size, cfg.moe_intermediate_size
        self.num_experts = e
        self.top_k = cfg.num_experts_per_tok
        self.n_group = cfg.n_group
        self.topk_group = cfg.topk_group
        self.norm_topk_prob = cfg.norm_topk_prob
        self.scaling = cfg.routed_scaling_factor
        self.router_weight = nn.Parameter(torch.zeros(e, h))
        self.router_bias = nn.Parameter(torch.zeros(e), requires_grad=False)
        self.w13 = nn.Parameter(torch.zeros(e, 2 * i, h))  # [E, gate|up, H]
        self.w2 = nn.Parameter(torch.zeros(e, h, i))  # [E, H, I]
        self.shared_experts = MLP(h, i * cfg.n_shared_experts)

    def route(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Pick experts per token: [N, H] -> (weights [N, k], expert ids [N, k]).

        Scores are sigmoid(router logits). Selection uses scores + correction bias: first the
        `topk_group` groups whose two best biased scores sum highest, then the top-k experts inside
        them. The mixing weights are the unbiased scores of the chosen experts, renormalised, times
        the routed scaling factor.
        """
        scores = torch.sigmoid(F.linear(x.float(), self.router_weight.float()))
        biased = scores + self.router_bias.float()
        n = x.shape[0]
        grouped = biased.view(n, self.n_group, -1)  # [N, G, E/G]
        group_score = grouped.topk(2, dim=-1).values.sum(-1)  # [N, G]
        keep_groups = group_score.topk(self.topk_group, dim=-1).indices
        group_mask = torch.zeros_like(group_score, dtype=torch.bool).scatter_(1, keep_groups, True)
        expert_mask = group_mask.unsqueeze(-1).expand_as(grouped).reshape(n, -1)
        ids = biased.masked_fill(~expert_mask, float("-inf")).topk(self.top_k, dim=-1).indices
        weights = scores.gather(1, ids)
        if self.norm_topk_prob:
            weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
        return weights * self.scaling, ids

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])  # [N, H]
        weights, ids = self.route(flat)
        # Sort the N*k (token, expert) pairs by expert, run each expert on its contiguous slice,
        # then un-sort with a gather and sum the k contributions per token (no scatter-add).
        flat_ids = ids.reshape(-1)
        order = flat_ids.argsort(stable=True)
        counts = torch.bincount(flat_ids, minlength=self.num_experts).tolist()
        inputs = flat.index_select(0, order // self.top_k)  # [N*k, H] grouped by expert
        outputs = torch.empty_like(inputs)
        start = 0
        for expert, count in enumerate(counts):
            if count:
                gate, up = F.linear(inputs[start : start + count], self.w13[expert]).chunk(2, dim=-1)
                torch.matmul(F.silu(gate) * up, self.w2[expert].t(), out=outputs[start : start + count])
                start += count
        routed = outputs.index_select(0, order.argsort())  # back to (token, slot) order
        routed = (routed.view(-1, self.top_k, shape[-1]) * weights.unsqueeze(-1).to(flat.dtype)).sum(1)
        return (routed + self.shared_experts(flat)).reshape(shape)
