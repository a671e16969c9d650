"""The embedded default model `kimi-linear-tiny`: a small 3:1 KDA:MLA Kimi Linear with deterministic
random weights. It is written once, in the same HF format as real checkpoints, into a cache folder
on first use and then loaded through the same loader.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import Tensor

from prfaas.model.checkpoint import expected_tensors, save_checkpoint
from prfaas.model.config import ModelConfig

TINY_NAME = "kimi-linear-tiny"
TINY_VERSION = 1
TINY_SEED = 20260415
BYTE_VOCAB = 256
BOS_ID, EOS_ID, PAD_ID = 256, 257, 258


def tiny_config() -> ModelConfig:
    raw = {
        "model_type": "kimi_linear",
        "vocab_size": 512,
        "hidden_size": 256,
        "intermediate_size": 512,
        "num_hidden_layers": 8,
        "layer_types": ["linear_attention"] * 3 + ["full_attention"] + ["linear_attention"] * 3 + ["full_attention"],
        "first_k_dense_replace": 1,
        "rms_norm_eps": 1e-5,
        "num_attention_heads": 4,
        "q_lora_rank": None,
        "kv_lora_rank": 64,
        "qk_nope_head_dim": 32,
        "qk_rope_head_dim": 16,
        "v_head_dim": 32,
        "linear_attn_config": {"num_heads": 4, "head_dim": 64, "short_conv_kernel_size": 4},
        "num_experts": 8,
        "num_experts_per_token": 2,
        "num_expert_group": 2,
        "topk_group": 1,
        "num_shared_experts": 1,
        "moe_intermediate_size": 128,
        "routed_scaling_factor": 2.446,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "pad_token_id": PAD_ID,
        "model_max_length": 65536,
    }
    return ModelConfig.from_hf_dict(raw)


def random_tensors(cfg: ModelConfig, seed: int) -> dict[str, Tensor]:
    """Deterministic weights with scales that keep activations O(1) through the stack."""
    gen = torch.Generator().manual_seed(seed)
    return {name: _init(name, shape, gen) for name, shape in sorted(expected_tensors(cfg).items())}


def _init(name: str, shape: tuple[int, ...], gen: torch.Generator) -> Tensor:
    if name.endswith("A_log"):
        return torch.empty(shape).uniform_(1.0, 16.0, generator=gen).log()
    if name.endswith("dt_bias"):
        dt = torch.empty(shape).uniform_(math.log(1e-3), math.log(1e-1), generator=gen).exp()
        return dt + torch.log(-torch.expm1(-dt))  # inverse softplus
    if name.endswith("e_score_correction_bias"):
        return 0.05 * torch.randn(shape, generator=gen)
    if "norm" in name:
        return 1.0 + 0.1 * torch.randn(shape, generator=gen)
    if name.endswith("conv1d.weight"):
        return torch.randn(shape, generator=gen) / math.sqrt(shape[-1])
    if "embed_tokens" in name:
        return torch.randn(shape, generator=gen)
    return torch.randn(shape, generator=gen) / math.sqrt(shape[-1])


def cache_root() -> Path:
    root = os.environ.get("PRFAAS_CACHE_DIR")
    return Path(root) if root else Path.home() / ".cache" / "prfaas"


def ensure_tiny(root: Path | None = None) -> Path:
    """Write the tiny checkpoint if it is not cached yet; return its folder."""
    folder = (root or cache_root()) / "models" / f"{TINY_NAME}-v{TINY_VERSION}"
    if (folder / "config.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    cfg = tiny_config()
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-", dir=folder.parent))
    try:
        save_checkpoint(tmp, cfg, random_tensors(cfg, TINY_SEED))
        tmp.rename(folder)  # atomic: concurrent first uses agree on one folder
    except OSError:
        if not (folder / "config.json").is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def resolve_model(name_or_path: str) -> Path:
    """`kimi-linear-tiny` or a checkpoint folder path."""
    if name_or_path == TINY_NAME:
        return ensure_tiny()
    path = Path(name_or_path)
    if not path.is_dir():
        raise FileNotFoundError(f"model {name_or_path!r}: not {TINY_NAME!r} and not a checkpoint folder")
    return path
