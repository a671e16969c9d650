"""Tiny random `KimiLinearForCausalLM` checkpoints written with transformers' own `save_pretrained`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

FULL, LINEAR = "full_attention", "linear_attention"

HF_CONFIGS: dict[str, dict[str, Any]] = {
    "3to1-nolora": dict(
        layer_types=[LINEAR, LINEAR, LINEAR, FULL],
        q_lora_rank=None,
        num_attention_heads=4,
        linear_num_heads=2,
        num_local_experts=8,
        num_experts_per_tok=2,
        n_group=2,
        topk_group=1,
    ),
    "mixed-lora": dict(
        layer_types=[FULL, LINEAR, FULL, LINEAR, LINEAR],
        q_lora_rank=24,
        num_attention_heads=2,
        linear_num_heads=4,
        num_local_experts=4,
        num_experts_per_tok=1,
        n_group=1,
        topk_group=1,
    ),
    "7layer-16experts": dict(
        layer_types=[LINEAR, LINEAR, FULL, LINEAR, LINEAR, LINEAR, FULL],
        q_lora_rank=None,
        num_attention_heads=3,
        linear_num_heads=3,
        num_local_experts=16,
        num_experts_per_tok=4,
        n_group=4,
        topk_group=2,
    ),
}


def save_hf_model(name: str, folder: Path, seed: int = 0) -> Path:
    from transformers import KimiLinearConfig, KimiLinearForCausalLM

    base = dict(
        vocab_size=200,
        hidden_size=64,
        intermediate_size=96,
        moe_intermediate_size=32,
        kv_lora_rank=16,
        qk_rope_head_dim=8,
        qk_nope_head_dim=16,
        v_head_dim=16,
        linear_head_dim=16,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        routed_scaling_factor=2.446,
    )
    over = HF_CONFIGS[name]
    cfg = KimiLinearConfig(
        **base,
        **over,
        num_hidden_layers=len(over["layer_types"]),
        num_key_value_heads=over["num_attention_heads"],
    )
    torch.manual_seed(seed)
    model = KimiLinearForCausalLM(cfg).eval()
    with torch.no_grad():  # make the router and gates matter: HF initialises some of them to zero
        for name_, p in model.named_parameters():
            if "e_score_correction_bias" in name_ or name_.endswith("gate.weight"):
                p.normal_(0, 0.5)
            elif "norm" in name_:
                p.normal_(1.0, 0.1)
    for name_, buf in model.named_buffers():
        if "e_score_correction_bias" in name_:
            buf.normal_(0, 0.05)
    out = folder / name
    model.save_pretrained(out)
    return out
