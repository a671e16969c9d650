"""Kimi Linear model configuration, parsed once from an HF `config.json`.

Two config styles exist in the wild and both are accepted:
- explicit `layer_types` (what `KimiLinearForCausalLM.save_pretrained` writes), and
- the released checkpoint's `linear_attn_config` with 1-indexed `kda_layers` / `full_attn_layers`.
Unknown model types and options this implementation does not support are errors naming the field.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

LINEAR = "linear_attention"
FULL = "full_attention"
DENSE = "dense"
SPARSE = "sparse"

# transformers' attribute_map aliases: the checkpoint may use either spelling.
_ALIASES = {
    "num_experts": "num_local_experts",
    "num_experts_per_token": "num_experts_per_tok",
    "num_expert_group": "n_group",
    "num_shared_experts": "n_shared_experts",
    "moe_renormalize": "norm_topk_prob",
    "model_max_length": "max_position_embeddings",
}


class ConfigError(ValueError):
    """A model config is missing a field, names an unsupported option, or is inconsistent."""


@dataclass(frozen=True, slots=True)
class ModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    layer_types: tuple[str, ...]
    mlp_layer_types: tuple[str, ...]
    rms_norm_eps: float
    # MLA (full attention, NoPE)
    num_attention_heads: int
    q_lora_rank: int | None
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    # KDA (linear attention)
    linear_num_heads: int
    linear_head_dim: int
    linear_conv_kernel_dim: int
    # MoE
    num_local_experts: int
    num_experts_per_tok: int
    n_group: int
    topk_group: int
    n_shared_experts: int
    moe_intermediate_size: int
    routed_scaling_factor: float
    norm_topk_prob: bool
    # tokens
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]
    pad_token_id: int | None
    tie_word_embeddings: bool
    max_position_embeddings: int

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def mla_cache_dim(self) -> int:
        """Values cached per token per MLA layer: the compressed latent plus the shared key part."""
        return self.kv_lora_rank + self.qk_rope_head_dim

    @property
    def linear_dim(self) -> int:
        return self.linear_num_heads * self.linear_head_dim

    def fingerprint(self) -> str:
        """A stable hash of everything that changes the model's computation or state layout."""
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def to_hf_dict(self) -> dict[str, Any]:
        """The config in the style `save_pretrained` writes (explicit layer types)."""
        out: dict[str, Any] = asdict(self)
        out["layer_types"] = list(self.layer_types)
        out["mlp_layer_types"] = list(self.mlp_layer_types)
        eos = out.pop("eos_token_ids")
        out["eos_token_id"] = eos[0] if len(eos) == 1 else list(eos)
        out["model_type"] = "kimi_linear"
        out["architectures"] = ["KimiLinearForCausalLM"]
        out["num_key_value_heads"] = self.num_attention_heads
        out["hidden_act"] = "silu"
        out["dtype"] = "float32"
        return out

    @classmethod
    def from_hf_dict(cls, raw: dict[str, Any]) -> ModelConfig:
        return _parse(raw)


def _parse(raw: dict[str, Any]) -> ModelConfig:
    model_type = raw.get("model_type")
    if model_type != "kimi_linear":
        raise ConfigError(f"config.json: model_type is {model_type!r}; only 'kimi_linear' is supported")
    cfg = {_ALIASES.get(k, k): v for k, v in raw.items()}
    _check_unsupported(cfg)
    num_layers = _req_int(cfg, "num_hidden_layers")
    linear_cfg = cfg.get("linear_attn_config") or {}
    layer_types = _layer_types(cfg, linear_cfg, num_layers)
    eos = cfg.get("eos_token_id")
    eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
    q_lora = cfg.get("q_lora_rank")
    parsed = ModelConfig(
        vocab_size=_req_int(cfg, "vocab_size"),
        hidden_size=_req_int(cfg, "hidden_size"),
        intermediate_size=_req_int(cfg, "intermediate_size"),
        num_hidden_layers=num_layers,
        layer_types=layer_types,
        mlp_layer_types=_mlp_layer_types(cfg, num_layers),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
        num_attention_heads=_req_int(cfg, "num_attention_heads"),
        q_lora_rank=None if q_lora is None else int(q_lora),
        kv_lora_rank=_req_int(cfg, "kv_lora_rank"),
        qk_nope_head_dim=_req_int(cfg, "qk_nope_head_dim"),
        qk_rope_head_dim=int(cfg.get("qk_rope_head_dim", 0)),
        v_head_dim=_req_int(cfg, "v_head_dim"),
        linear_num_heads=int(linear_cfg.get("num_heads", cfg.get("linear_num_heads", 32))),
        linear_head_dim=int(linear_cfg.get("head_dim", cfg.get("linear_head_dim", 128))),
        linear_conv_kernel_dim=int(linear_cfg.get("short_conv_kernel_size", cfg.get("linear_conv_kernel_dim", 4))),
        num_local_experts=int(cfg.get("num_local_experts", 0)),
        num_experts_per_tok=int(cfg.get("num_experts_per_tok") or 0),
        n_group=int(cfg.get("n_group", 1)),
        topk_group=int(cfg.get("topk_group") or 1),
        n_shared_experts=int(cfg.get("n_shared_experts", 1)),
        moe_intermediate_size=int(cfg.get("moe_intermediate_size", 0)),
        routed_scaling_factor=float(cfg.get("routed_scaling_factor", 1.0)),
        norm_topk_prob=bool(cfg.get("norm_topk_prob", True)),
        bos_token_id=cfg.get("bos_token_id"),
        eos_token_ids=eos_ids,
        pad_token_id=cfg.get("pad_token_id"),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        max_position_embeddings=int(cfg.get("max_position_embeddings", 1 << 20)),
    )
    _validate(parsed)
    return parsed


def _req_int(cfg: dict[str, Any], name: str) -> int:
    if name not in cfg or cfg[name] is None:
        raise ConfigError(f"config.json: required field {name!r} is missing")
    value = cfg[name]
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"config.json: {name!r} must be a positive integer, got {value!r}")
    return value


def _check_unsupported(cfg: dict[str, Any]) -> None:
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise ConfigError(f"config.json: hidden_act {act!r} is not supported (only 'silu')")
    if cfg.get("attention_bias", False):
        raise ConfigError("config.json: attention_bias=true is not supported")
    if cfg.get("mla_use_nope") is False:
        raise ConfigError("config.json: mla_use_nope=false (rotary MLA) is not supported; Kimi Linear uses NoPE")
    kv_heads = cfg.get("num_key_value_heads")
    if kv_heads not in (None, cfg.get("num_attention_heads")):
        raise ConfigError("config.json: num_key_value_heads must equal num_attention_heads for MLA")
    linear_cfg = cfg.get("linear_attn_config") or {}
    if linear_cfg.get("num_v_heads", linear_cfg.get("num_heads")) != linear_cfg.get("num_heads"):
        raise ConfigError("config.json: linear_attn_config.num_v_heads != num_heads (GVA) is not supported")


def _layer_types(cfg: dict[str, Any], linear_cfg: dict[str, Any], num_layers: int) -> tuple[str, ...]:
    explicit = cfg.get("layer_types")
    if explicit is not None:
        types = tuple(explicit)
    elif "kda_layers" in linear_cfg and "full_attn_layers" in linear_cfg:
        types = _types_from_indices(linear_cfg, num_layers)
    else:
        raise ConfigError(
            "config.json: the layer pattern is missing: give 'layer_types' or "
            "'linear_attn_config' with 'kda_layers' and 'full_attn_layers'"
        )
    if len(types) != num_layers:
        raise ConfigError(f"config.json: layer_types has {len(types)} entries, num_hidden_layers is {num_layers}")
    for i, kind in enumerate(types):
        if kind not in (LINEAR, FULL):
            raise ConfigError(f"config.json: layer_types[{i}] is {kind!r}; expected {LINEAR!r} or {FULL!r}")
    return types


def _types_from_indices(linear_cfg: dict[str, Any], num_layers: int) -> tuple[str, ...]:
    types: list[str | None] = [None] * num_layers
    for key, kind in (("kda_layers", LINEAR), ("full_attn_layers", FULL)):
        for one_based in linear_cfg[key]:
            if not 1 <= one_based <= num_layers:
                raise ConfigError(f"config.json: linear_attn_config.{key} has {one_based}, outside 1..{num_layers}")
            if types[one_based - 1] is not None:
                raise ConfigError(f"config.json: layer {one_based} is listed as both KDA and full attention")
            types[one_based - 1] = kind
    missing = [i + 1 for i, t in enumerate(types) if t is None]
    if missing:
        raise ConfigError(f"config.json: layers {missing} are in neither kda_layers nor full_attn_layers")
    return tuple(t for t in types if t is not None)


def _mlp_layer_types(cfg: dict[str, Any], num_layers: int) -> tuple[str, ...]:
    explicit = cfg.get("mlp_layer_types")
    if explicit is None:
        first_dense = int(cfg.get("first_k_dense_replace", 1))
        return tuple(DENSE if i < first_dense else SPARSE for i in range(num_layers))
    types = tuple(explicit)
    if len(types) != num_layers or any(t not in (DENSE, SPARSE) for t in types):
        raise ConfigError(f"config.json: mlp_layer_types must be {num_layers} entries of 'dense'/'sparse'")
    return types


def _validate(c: ModelConfig) -> None:
    if SPARSE in c.mlp_layer_types:
        if c.num_local_experts <= 0 or c.moe_intermediate_size <= 0 or c.num_experts_per_tok <= 0:
            raise ConfigError("config.json: MoE layers need num_experts, num_experts_per_token, moe_intermediate_size")
        if c.num_local_experts % c.n_group or c.num_local_experts // c.n_group < 2:
            raise ConfigError("config.json: num_experts must split into n_group groups of at least 2 experts")
        if c.topk_group > c.n_group:
            raise ConfigError("config.json: topk_group must be <= n_group")
        if c.num_experts_per_tok > c.topk_group * (c.num_local_experts // c.n_group):
            raise ConfigError("config.json: num_experts_per_token exceeds the experts in the selected groups")
    if c.linear_conv_kernel_dim < 2:
        raise ConfigError("config.json: short_conv_kernel_size must be >= 2")
