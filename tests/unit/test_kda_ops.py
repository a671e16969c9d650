"""KDA kernels: chunked prefill and decode step against the token-by-token reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from prfaas.model import kda_ops
from prfaas.model.kda_ops import chunk_kda, kda_step, naive_recurrent_kda

Inputs = tuple[Tensor, Tensor, Tensor, Tensor, Tensor]
TOL = 1e-5


def make_inputs(
    b: int, t: int, h: int, dk: int, dv: int, rate: float = 1.0, seed: int = 0, mixed: bool = False
) -> Inputs:
    """Random q, k (L2-normalised), v, g = -softplus(x) * rate, beta = sigmoid(x)."""
    gen = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(b, t, h, dk, generator=gen), dim=-1)
    k = F.normalize(torch.randn(b, t, h, dk, generator=gen), dim=-1)
    v = torch.randn(b, t, h, dv, generator=gen)
    g = -F.softplus(torch.randn(b, t, h, dk, generator=gen)) * rate
    if mixed:  # half the channels barely decay: large |G| next to tiny pairwise differences
        g[..., ::2] *= 1e-3
    beta = torch.sigmoid(torch.randn(b, t, h, generator=gen))
    return q, k, v, g, beta


def time_slice(args: Inputs, sl: slice) -> Inputs:
    q, k, v, g, beta = (x[:, sl] for x in args)
    return q, k, v, g, beta


def random_state(b: int, h: int, dk: int, dv: int, seed: int = 1) -> Tensor:
    return torch.randn(b, h, dk, dv, generator=torch.Generator().manual_seed(seed))


def rel_err(actual: Tensor, expected: Tensor) -> float:
    assert torch.isfinite(actual).all()
    scale = expected.abs().max().clamp_min(1e-30)
    return float((actual.float() - expected.float()).abs().max() / scale)


CASES = [
    # b, t, h, dk, dv, chunk, rate, mixed
    pytest.param(1, 128, 2, 32, 32, 64, 1.0, False, id="T-multiple-C64"),
    pytest.param(2, 100, 3, 16, 24, 16, 1.0, False, id="T-not-multiple-C16-KneV"),
    pytest.param(2, 37, 2, 32, 16, 64, 1.0, False, id="T-below-C"),
    pytest.param(1, 150, 2, 32, 48, 64, 0.02, False, id="weak-decay"),
    pytest.param(2, 90, 2, 16, 16, 16, 0.05, False, id="weak-decay-C16"),
    pytest.param(2, 96, 2, 32, 32, 16, 20.0, False, id="strong-decay-C16"),
    pytest.param(1, 200, 2, 32, 32, 64, 20.0, False, id="strong-decay-C64"),
    pytest.param(1, 160, 2, 32, 32, 64, 20.0, True, id="strong-mixed-decay"),
    pytest.param(1, 50, 2, 16, 16, 10, 1.0, False, id="odd-chunk"),
]


@pytest.mark.parametrize(("b", "t", "h", "dk", "dv", "chunk", "rate", "mixed"), CASES)
@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "init-state"])
def test_chunk_matches_naive(
    b: int, t: int, h: int, dk: int, dv: int, chunk: int, rate: float, mixed: bool, with_state: bool
) -> None:
    args = make_inputs(b, t, h, dk, dv, rate=rate, mixed=mixed)
    s0 = random_state(b, h, dk, dv) if with_state else None
    o_ref, s_ref = naive_recurrent_kda(*args, initial_state=s0)
    o, s, cs = chunk_kda(*args, initial_state=s0, chunk_size=chunk)
    assert cs is None
    assert o.shape == (b, t, h, dv) and s.shape == (b, h, dk, dv)
    assert s.dtype == torch.float32
    assert rel_err(o, o_ref) < TOL
    assert rel_err(s, s_ref) < TOL


def test_chunk_does_not_modify_initial_state() -> None:
    args = make_inputs(1, 40, 2, 16, 16)
    s0 = random_state(1, 2, 16, 16)
    s0_copy = s0.clone()
    chunk_kda(*args, initial_state=s0, chunk_size=16)
    naive_recurrent_kda(*args, initial_state=s0)
    assert torch.equal(s0, s0_copy)


@pytest.mark.parametrize(("t", "chunk"), [(100, 16), (128, 32), (20, 32)])
def test_chunk_states_match_naive_prefixes(t: int, chunk: int) -> None:
    b, h, dk, dv = 2, 2, 16, 24
    args = make_inputs(b, t, h, dk, dv, rate=2.0, seed=3)
    s0 = random_state(b, h, dk, dv)
    _, s_final, cs = chunk_kda(*args, initial_state=s0, chunk_size=chunk, return_chunk_states=True)
    assert cs is not None
    n_full = t // chunk
    assert cs.shape == (b, n_full, h, dk, dv)
    for n in range(n_full):
        end = (n + 1) * chunk
        _, s_ref = naive_recurrent_kda(*time_slice(args, slice(None, end)), initial_state=s0)
        assert rel_err(cs[:, n], s_ref) < TOL
    if t % chunk == 0 and n_full:
        assert torch.equal(cs[:, -1], s_final)


@pytest.mark.parametrize(("split", "chunk"), [(64, 32), (70, 32), (5, 16)])
def test_split_prefill_equals_single_call(split: int, chunk: int) -> None:
    args = make_inputs(2, 150, 2, 32, 16, rate=1.5, seed=5)
    s0 = random_state(2, 2, 32, 16)
    o_full, s_full, _ = chunk_kda(*args, initial_state=s0, chunk_size=chunk)
    o1, s1, _ = chunk_kda(*time_slice(args, slice(None, split)), initial_state=s0, chunk_size=chunk)
    o2, s2, _ = chunk_kda(*time_slice(args, slice(split, None)), initial_state=s1, chunk_size=chunk)
    assert rel_err(torch.cat((o1, o2), dim=1), o_full) < TOL
    assert rel_err(s2, s_full) < TOL


def test_small_budget_groups_and_head_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tiny temporary budget forces one chunk per group and one head per slice."""
    args = make_inputs(2, 90, 3, 16, 16, rate=1.0, seed=7)
    s0 = random_state(2, 3, 16, 16)
    o_ref, s_ref = naive_recurrent_kda(*args, initial_state=s0)
    _, _, cs_ref = chunk_kda(*args, initial_state=s0, chunk_size=16, return_chunk_states=True)
    monkeypatch.setattr(kda_ops, "_PAIR_BUDGET_BYTES", 1)
    o, s, cs = chunk_kda(*args, initial_state=s0, chunk_size=16, return_chunk_states=True)
    assert rel_err(o, o_ref) < TOL
    assert rel_err(s, s_ref) < TOL
    assert cs is not None and cs_ref is not None
    assert rel_err(cs, cs_ref) < TOL


def test_custom_scale_and_low_precision_inputs() -> None:
    args = make_inputs(1, 70, 2, 16, 32, seed=9)
    o_ref, s_ref = naive_recurrent_kda(*args, scale=0.5)
    o, s, _ = chunk_kda(*args, scale=0.5, chunk_size=32)
    assert rel_err(o, o_ref) < TOL and rel_err(s, s_ref) < TOL

    q, k, v, g, beta = (x.to(torch.bfloat16) for x in args)
    half = (q, k, v, g, beta)
    o_ref16, s_ref16 = naive_recurrent_kda(*half)
    o16, s16, _ = chunk_kda(*half, chunk_size=32)
    assert o16.dtype == torch.bfloat16 and s16.dtype == torch.float32
    assert rel_err(s16, s_ref16) < TOL
    assert rel_err(o16, o_ref16) < 1e-2  # both rounded to bfloat16 at the end


def test_empty_sequence_keeps_state() -> None:
    args = make_inputs(1, 0, 2, 16, 16)
    s0 = random_state(1, 2, 16, 16)
    o, s, cs = chunk_kda(*args, initial_state=s0, return_chunk_states=True)
    assert o.shape == (1, 0, 2, 16)
    assert torch.equal(s, s0)
    assert cs is not None and cs.shape == (1, 0, 2, 16, 16)


@pytest.mark.parametrize("rate", [1.0, 20.0])
def test_step_matches_naive(rate: float) -> None:
    b, t, h, dk, dv = 2, 40, 3, 16, 24
    q, k, v, g, beta = make_inputs(b, t, h, dk, dv, rate=rate, seed=11)
    s0 = random_state(b, h, dk, dv)
    o_ref, s_ref = naive_recurrent_kda(q, k, v, g, beta, initial_state=s0)
    state = s0.clone()
    ptr = state.data_ptr()
    outs = [kda_step(q[:, i], k[:, i], v[:, i], g[:, i], beta[:, i], state) for i in range(t)]
    assert state.data_ptr() == ptr
    assert rel_err(torch.stack(outs, dim=1), o_ref) < TOL
    assert rel_err(state, s_ref) < TOL


def test_step_updates_state_in_place_and_continues_prefill() -> None:
    q, k, v, g, beta = make_inputs(1, 33, 2, 16, 16, seed=13)
    _, s_prefill, _ = chunk_kda(q[:, :32], k[:, :32], v[:, :32], g[:, :32], beta[:, :32], chunk_size=16)
    before = s_prefill.clone()
    o = kda_step(q[:, 32], k[:, 32], v[:, 32], g[:, 32], beta[:, 32], s_prefill)
    assert not torch.equal(s_prefill, before)
    o_ref, s_ref = naive_recurrent_kda(q, k, v, g, beta)
    assert rel_err(o, o_ref[:, 32]) < TOL
    assert rel_err(s_prefill, s_ref) < TOL


def test_step_rejects_non_float32_state() -> None:
    q, k, v, g, beta = (x[:, 0] for x in make_inputs(1, 1, 2, 8, 8))
    with pytest.raises(TypeError):
        kda_step(q, k, v, g, beta, torch.zeros(1, 2, 8, 8, dtype=torch.float64))
