"""HF-format checkpoint folders: `config.json` plus `model.safetensors` or sharded safetensors + index.

Tensor names follow what `KimiLinearForCausalLM.save_pretrained` writes, which is also the naming of
the public Kimi-Linear-48B-A3B checkpoint (`block_sparse_moe`, per-expert `w1/w2/w3`, separate
`q/k/v_conv1d`). Every expected tensor is checked for presence and shape before anything is built;
extra tensors are an error too, since they usually mean an option this implementation lacks.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from prfaas.model.config import FULL, SPARSE, ConfigError, ModelConfig
from prfaas.model.kimi_linear import KimiLinearModel

Shape = tuple[int, ...]
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


class CheckpointError(ValueError):
    """A checkpoint folder is incomplete or does not match its config."""


def expected_tensors(cfg: ModelConfig) -> dict[str, Shape]:
    """Every tensor a checkpoint for `cfg` must hold, with its shape, in checkpoint naming."""
    v, h = cfg.vocab_size, cfg.hidden_size
    out: dict[str, Shape] = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,)}
    if not cfg.tie_word_embeddings:
        out["lm_head.weight"] = (v, h)
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        out[p + "input_layernorm.weight"] = (h,)
        out[p + "post_attention_layernorm.weight"] = (h,)
        attn = _mla_tensors(cfg) if cfg.layer_types[i] == FULL else _kda_tensors(cfg)
        ffn = _moe_tensors(cfg) if cfg.mlp_layer_types[i] == SPARSE else _mlp_tensors(h, cfg.intermediate_size)
        out.update({p + "self_attn." + k: s for k, s in attn.items()})
        out.update({p + "block_sparse_moe." + k: s for k, s in ffn.items()})
    return out


def _kda_tensors(cfg: ModelConfig) -> dict[str, Shape]:
    h, d, hidden, w = cfg.linear_num_heads, cfg.linear_head_dim, cfg.hidden_size, cfg.linear_conv_kernel_dim
    dim = h * d
    return {
        "q_proj.weight": (dim, hidden),
        "k_proj.weight": (dim, hidden),
        "v_proj.weight": (dim, hidden),
        "q_conv1d.weight": (dim, 1, w),
        "k_conv1d.weight": (dim, 1, w),
        "v_conv1d.weight": (dim, 1, w),
        "A_log": (1, 1, h, 1),
        "dt_bias": (dim,),
        "f_a_proj.weight": (d, hidden),
        "f_b_proj.weight": (dim, d),
        "b_proj.weight": (h, hidden),
        "g_a_proj.weight": (d, hidden),
        "g_b_proj.weight": (dim, d),
        "o_norm.weight": (d,),
        "o_proj.weight": (hidden, dim),
    }


def _mla_tensors(cfg: ModelConfig) -> dict[str, Shape]:
    hidden, heads, rank = cfg.hidden_size, cfg.num_attention_heads, cfg.kv_lora_rank
    out: dict[str, Shape] = {
        "kv_a_proj_with_mqa.weight": (rank + cfg.qk_rope_head_dim, hidden),
        "kv_a_layernorm.weight": (rank,),
        "kv_b_proj.weight": (heads * (cfg.qk_nope_head_dim + cfg.v_head_dim), rank),
        "o_proj.weight": (hidden, heads * cfg.v_head_dim),
    }
    if cfg.q_lora_rank is None:
        out["q_proj.weight"] = (heads * cfg.qk_head_dim, hidden)
    else:
        out["q_a_proj.weight"] = (cfg.q_lora_rank, hidden)
        out["q_a_layernorm.weight"] = (cfg.q_lora_rank,)
        out["q_b_proj.weight"] = (heads * cfg.qk_head_dim, cfg.q_lora_rank)
    return out


def _mlp_tensors(hidden: int, inter: int) -> dict[str, Shape]:
    return {
        "gate_proj.weight": (inter, hidden),
        "up_proj.weight": (inter, hidden),
        "down_proj.weight": (hidden, inter),
    }


def _moe_tensors(cfg: ModelConfig) -> dict[str, Shape]:
    h, i, e = cfg.hidden_size, cfg.moe_intermediate_size, cfg.num_local_experts
    out: dict[str, Shape] = {"gate.weight": (e, h), "gate.e_score_correction_bias": (e,)}
    for x in range(e):
        out[f"experts.{x}.w1.weight"] = (i, h)
        out[f"experts.{x}.w2.weight"] = (h, i)
        out[f"experts.{x}.w3.weight"] = (i, h)
    shared = _mlp_tensors(h, i * cfg.n_shared_experts)
    out.update({"shared_experts." + k: s for k, s in shared.items()})
    return out


# -- reading ---------------------------------------------------------------------------------------
def read_config(folder: Path) -> ModelConfig:
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder}: no config.json (expected an HF-format checkpoint folder)")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc
    try:
        return ModelConfig.from_hf_dict(raw)
    except ConfigError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc


def _weight_files(folder: Path) -> dict[str, Path]:
    """Tensor name -> file holding it."""
    index = folder / INDEX_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index}: missing 'weight_map'")
        for name in set(weight_map.values()):
            if not (folder / name).is_file():
                raise CheckpointError(f"{index}: shard {name} listed but missing from {folder}")
        return {k: folder / v for k, v in weight_map.items()}
    single = folder / SINGLE_FILE
    if not single.is_file():
        raise CheckpointError(f"{folder}: neither {SINGLE_FILE} nor {INDEX_FILE} found")
    with safe_open(str(single), framework="pt") as f:
        return dict.fromkeys(f.keys(), single)


def _alias(name: str) -> str:
    """Dense layers may be stored under `mlp.` instead of `block_sparse_moe.`."""
    return name.replace(".block_sparse_moe.", ".mlp.")


def read_tensors(folder: Path, cfg: ModelConfig, dtype: torch.dtype) -> dict[str, Tensor]:
    files = _weight_files(folder)
    expected = expected_tensors(cfg)
    resolved = {name: name if name in files else _alias(name) for name in expected}
    missing = [n for n, src in resolved.items() if src not in files]
    if missing:
        raise CheckpointError(f"{folder}: missing tensor {missing[0]}" + _more(missing))
    extra = sorted(set(files) - set(resolved.values()))
    if extra:
        raise CheckpointError(f"{folder}: unexpected tensor {extra[0]} (unsupported option?)" + _more(extra))
    out = {}
    for name, tensor in _load(files, resolved):
        if tuple(tensor.shape) != expected[name]:
            raise CheckpointError(
                f"{folder}: tensor {name} has shape {tuple(tensor.shape)}, config implies {expected[name]}"
            )
        out[name] = tensor.to(torch.float32 if _keep_fp32(name) else dtype)
    return out


def _keep_fp32(name: str) -> bool:
    return name.endswith(("A_log", "dt_bias", "gate.weight", "e_score_correction_bias"))


def _load(files: dict[str, Path], resolved: dict[str, str]) -> Iterator[tuple[str, Tensor]]:
    by_file: dict[Path, list[str]] = {}
    for name, src in resolved.items():
        by_file.setdefault(files[src], []).append(name)
    for path, names in by_file.items():
        with safe_open(str(path), framework="pt") as f:
            for name in names:
                yield name, f.get_tensor(resolved[name])


def _more(items: list[str]) -> str:
    return f" (and {len(items) - 1} more)" if len(items) > 1 else ""


# -- assembling ------------------------------------------------------------------------------------
def build_model(cfg: ModelConfig, tensors: dict[str, Tensor], dtype: torch.dtype) -> KimiLinearModel:
    """Map checkpoint tensors onto a `KimiLinearModel` and return it in eval mode."""
    model = KimiLinearModel(cfg).to(dtype)
    state = {
        "embed_tokens.weight": tensors["model.embed_tokens.weight"],
        "norm.weight": tensors["model.norm.weight"],
    }
    state["lm_head.weight"] = tensors.get("lm_head.weight", tensors["model.embed_tokens.weight"])
    for i in range(cfg.num_hidden_layers):
        state.update(_layer_state(cfg, tensors, i))
    model.load_state_dict(state, strict=True)
    return model.eval()


def _layer_state(cfg: ModelConfig, t: dict[str, Tensor], i: int) -> dict[str, Tensor]:
    src, dst = f"model.layers.{i}.", f"layers.{i}."
    out = {dst + n: t[src + n] for n in ("input_layernorm.weight", "post_attention_layernorm.weight")}
    attn = {
        k: t[src + "self_attn." + k] for k in (_mla_tensors(cfg) if cfg.layer_types[i] == FULL else _kda_tensors(cfg))
    }
    if cfg.layer_types[i] != FULL:
        convs = [attn.pop(f"{x}_conv1d.weight").squeeze(1) for x in "qkv"]
        attn["conv_weight"] = torch.cat(convs, dim=0)
        attn["A_log"] = attn["A_log"].reshape(-1)
    out.update({dst + "attn." + k: v for k, v in attn.items()})
    ffn = src + "block_sparse_moe."
    if cfg.mlp_layer_types[i] != SPARSE:
        out.update({dst + "mlp." + k: t[ffn + k] for k in _mlp_tensors(1, 1)})
        return out
    e = cfg.num_local_experts
    w13 = [torch.cat([t[f"{ffn}experts.{x}.w1.weight"], t[f"{ffn}experts.{x}.w3.weight"]]) for x in range(e)]
    out[dst + "mlp.w13"] = torch.stack(w13)
    out[dst + "mlp.w2"] = torch.stack([t[f"{ffn}experts.{x}.w2.weight"] for x in range(e)])
    out[dst + "mlp.router_weight"] = t[ffn + "gate.weight"]
    out[dst + "mlp.router_bias"] = t[ffn + "gate.e_score_correction_bias"]
    for k in _mlp_tensors(1, 1):
        out[dst + "mlp.shared_experts." + k] = t[ffn + "shared_experts." + k]
    return out


def load_checkpoint(folder: Path, dtype: torch.dtype = torch.float32) -> KimiLinearModel:
    """Read, validate and build a model from an HF-format folder."""
    cfg = read_config(folder)
    return build_model(cfg, read_tensors(folder, cfg, dtype), dtype)


def save_checkpoint(folder: Path, cfg: ModelConfig, tensors: dict[str, Tensor]) -> None:
    """Write `config.json` + `model.safetensors` (the single-file layout)."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / SINGLE_FILE))
    (folder / "config.json").write_text(json.dumps(cfg.to_hf_dict(), indent=2, sort_keys=True))
