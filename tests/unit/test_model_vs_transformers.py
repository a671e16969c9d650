"""Logits match transformers' KimiLinearForCausalLM (the oracle) through prefill and decode."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from prfaas.kv.cache import HybridCache
from prfaas.kv.spec import HybridSpec
from prfaas.model.checkpoint import load_checkpoint
from prfaas.model.kimi_linear import DecodeInput, KimiLinearModel, PrefillInput
from tests.hf_models import HF_CONFIGS, save_hf_model

pytest.importorskip("transformers", reason="transformers is the test oracle (pip install -e .[test])")
RTOL = 1e-4


def our_logits(model: KimiLinearModel, ids: list[int], prompt_len: int, block: int, chunk: int) -> torch.Tensor:
    """Logits at positions prompt_len-1 .. len(ids)-1: chunked prefill of the prompt, then decode steps."""
    spec = HybridSpec.from_config(model.config, block)
    cache = HybridCache(spec, num_blocks=64, max_seqs=2, snapshot_bytes=0)
    table = torch.tensor(cache.blocks.allocate((len(ids) + block - 1) // block))
    slot = cache.take_slot()
    out = None
    for start in range(0, prompt_len, chunk):
        end = min(prompt_len, start + chunk)
        out = model.prefill(cache, PrefillInput(torch.tensor(ids[start:end]), start, table, slot))
    assert out is not None
    rows = [out.last_logits]
    for pos in range(prompt_len, len(ids)):
        inp = DecodeInput(torch.tensor([ids[pos]]), torch.tensor([pos]), table.unsqueeze(0), torch.tensor([slot]))
        rows.append(model.decode(cache, inp)[0])
    return torch.stack(rows)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module", params=sorted(HF_CONFIGS))
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[object, KimiLinearModel]:
    from transformers import KimiLinearForCausalLM

    folder = save_hf_model(request.param, tmp_path_factory.mktemp("hf"))
    hf = KimiLinearForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return hf, load_checkpoint(Path(folder))


@pytest.mark.parametrize(
    ("prompt_len", "block", "chunk"),
    [
        (1, 16, 16),
        (15, 16, 16),
        (16, 16, 16),
        (17, 16, 16),
        (63, 16, 32),
        (64, 64, 64),
        (65, 64, 64),
        (130, 32, 64),
    ],
)
def test_logits_match_transformers(
    pair: tuple[object, KimiLinearModel], prompt_len: int, block: int, chunk: int
) -> None:
    hf, ours = pair
    gen = torch.Generator().manual_seed(prompt_len)
    ids = torch.randint(3, ours.config.vocab_size, (prompt_len + 5,), generator=gen).tolist()
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0, prompt_len - 1 :]  # type: ignore[operator]
    got = our_logits(ours, ids, prompt_len, block, chunk)
    assert got.shape == ref.shape
    assert rel_err(got, ref) < RTOL
