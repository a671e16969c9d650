"""Loading HF-format folders: both config styles, sharded files, and clear errors for bad ones."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from prfaas.model.checkpoint import CheckpointError, load_checkpoint
from prfaas.model.config import ModelConfig
from prfaas.model.tiny import ensure_tiny, tiny_config

pytest.importorskip("transformers")


@pytest.fixture()
def tiny_copy(tmp_path: Path) -> Path:
    dst = tmp_path / "ckpt"
    shutil.copytree(ensure_tiny(), dst)
    return dst


def _edit_config(folder: Path, **changes: object) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


def _edit_tensors(folder: Path, edit: object) -> None:
    tensors = load_file(str(folder / "model.safetensors"))
    edit(tensors)  # type: ignore[operator]
    save_file(tensors, str(folder / "model.safetensors"))


def test_checkpoint_style_config_gives_same_layers(tiny_copy: Path) -> None:
    cfg = json.loads((tiny_copy / "config.json").read_text())
    types = cfg.pop("layer_types")
    cfg["linear_attn_config"] = {
        "kda_layers": [i + 1 for i, t in enumerate(types) if t == "linear_attention"],
        "full_attn_layers": [i + 1 for i, t in enumerate(types) if t == "full_attention"],
        "num_heads": cfg.pop("linear_num_heads"),
        "head_dim": cfg.pop("linear_head_dim"),
        "short_conv_kernel_size": cfg.pop("linear_conv_kernel_dim"),
    }
    (tiny_copy / "config.json").write_text(json.dumps(cfg))
    assert load_checkpoint(tiny_copy).config == tiny_config()


def test_sharded_checkpoint_with_index_loads(tmp_path: Path) -> None:
    from transformers import KimiLinearForCausalLM

    from tests.hf_models import save_hf_model

    folder = save_hf_model("3to1-nolora", tmp_path)
    hf = KimiLinearForCausalLM.from_pretrained(folder)
    sharded = tmp_path / "sharded"
    hf.save_pretrained(sharded, max_shard_size="100KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    a, b = load_checkpoint(folder), load_checkpoint(sharded)
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(pa, pb), name


def test_missing_tensor_is_named(tiny_copy: Path) -> None:
    _edit_tensors(tiny_copy, lambda t: t.pop("model.layers.3.self_attn.kv_b_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensor model\.layers\.3\.self_attn\.kv_b_proj\.weight"):
        load_checkpoint(tiny_copy)


def test_misshaped_tensor_is_named(tiny_copy: Path) -> None:
    def shrink(t: dict[str, torch.Tensor]) -> None:
        t["model.layers.0.self_attn.q_conv1d.weight"] = torch.zeros(256, 1, 3)

    _edit_tensors(tiny_copy, shrink)
    with pytest.raises(
        CheckpointError, match=r"q_conv1d\.weight has shape \(256, 1, 3\), config implies \(256, 1, 4\)"
    ):
        load_checkpoint(tiny_copy)


def test_unexpected_tensor_is_an_error(tiny_copy: Path) -> None:
    _edit_tensors(tiny_copy, lambda t: t.update({"model.layers.0.self_attn.gate_lower_bound": torch.zeros(1)}))
    with pytest.raises(CheckpointError, match=r"unexpected tensor .*0\.self_attn\.gate_lower_bound"):
        load_checkpoint(tiny_copy)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model_type": "llama"}, "model_type is 'llama'"),
        ({"hidden_act": "gelu"}, "hidden_act 'gelu' is not supported"),
        ({"num_hidden_layers": 9}, "layer_types has 8 entries, num_hidden_layers is 9"),
        ({"layer_types": ["linear_attention"] * 7 + ["mamba"]}, r"layer_types\[7\] is 'mamba'"),
        ({"hidden_size": None}, "required field 'hidden_size' is missing"),
        ({"num_key_value_heads": 2}, "num_key_value_heads must equal num_attention_heads"),
    ],
)
def test_bad_config_fields_are_named(tiny_copy: Path, changes: dict[str, object], message: str) -> None:
    _edit_config(tiny_copy, **changes)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(tiny_copy)


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        load_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(tiny_config().to_hf_dict()))
    with pytest.raises(CheckpointError, match=r"neither model\.safetensors nor .*index\.json"):
        load_checkpoint(tmp_path)


def test_config_roundtrip() -> None:
    cfg = tiny_config()
    assert ModelConfig.from_hf_dict(cfg.to_hf_dict()) == cfg
