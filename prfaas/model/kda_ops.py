"""Kimi Delta Attention (KDA) kernels in pure PyTorch.

KDA is the gated delta rule with a per-channel decay. For one (batch, head) pair the state is
``S ∈ R^{K×V}`` (float32) and token ``t`` brings ``q_t, k_t ∈ R^K`` (L2-normalised by the caller),
``v_t ∈ R^V``, a log-decay ``g_t ∈ R^K`` (``g ≤ 0``, ``α_t = exp(g_t)``) and a scalar ``β_t ∈ (0, 1)``::

    S̃_t = Diag(α_t) S_{t-1}
    S_t = S̃_t + β_t k_t (v_t − S̃_tᵀ k_t)ᵀ
    o_t = S_tᵀ (scale · q_t)                  # the output reads the updated state

Three entry points share these semantics:

* :func:`naive_recurrent_kda` -- token-by-token reference loop;
* :func:`kda_step` -- batched single-token decode that updates the state in place;
* :func:`chunk_kda` -- chunked (WY / UT-transform) prefill; its docstring holds the derivation.

Arithmetic is float32 (in-chunk cumulative decays are summed in float64); outputs come back in the dtype of
``q``, states in float32.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

# Soft bound on the pair-term temporaries chunk_kda materialises at once ([.., b, b, K] in-block decays and
# [.., nb, C, K] cross-block factors); it sets how many chunks (and, if needed, heads) one group handles.
# Keeping groups small also keeps those temporaries in the allocator's reuse range, away from fresh mappings
# whose page faults cost more than the arithmetic.
_PAIR_BUDGET_BYTES = 16 * 2**20
# Exponents are clamped to >= this: e^-80 ≈ 2e-35 is negligible, and exp() stays off its denormal slow path.
_MIN_LOG_DECAY = -80.0


def _resolve_scale(scale: float | None, head_k_dim: int) -> float:
    return float(head_k_dim) ** -0.5 if scale is None else float(scale)


def _check_shapes(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor) -> None:
    if q.shape != k.shape or g.shape != k.shape:
        shapes = [tuple(x.shape) for x in (q, k, g)]
        raise ValueError(f"q, k, g must share one shape, got {shapes}")
    if v.shape[:-1] != k.shape[:-1] or beta.shape != k.shape[:-1]:
        raise ValueError(f"v {tuple(v.shape)} / beta {tuple(beta.shape)} do not match k {tuple(k.shape)}")


def _initial_state(initial_state: Tensor | None, like: Tensor, b: int, h: int, dk: int, dv: int) -> Tensor:
    """A fresh float32 ``[B, H, K, V]`` state: zeros, or a copy of ``initial_state``."""
    if initial_state is None:
        return torch.zeros(b, h, dk, dv, dtype=torch.float32, device=like.device)
    if initial_state.shape != (b, h, dk, dv):
        raise ValueError(f"initial_state has shape {tuple(initial_state.shape)}, expected {(b, h, dk, dv)}")
    return initial_state.to(device=like.device, dtype=torch.float32, copy=True)


# ----------------------------------------------------------------------------------------------------
# Reference recurrence
# ----------------------------------------------------------------------------------------------------


def naive_recurrent_kda(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    initial_state: Tensor | None = None,
    scale: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Reference KDA: a plain Python loop over tokens.

    Args:
        q, k: ``[B, T, H, K]`` (L2-normalised along K).
        v: ``[B, T, H, V]``.
        g: ``[B, T, H, K]`` log-decay, ``g ≤ 0``.
        beta: ``[B, T, H]`` write strength in (0, 1).
        initial_state: ``[B, H, K, V]`` or None for zeros (not modified).
        scale: query scale, default ``K ** -0.5``.

    Returns:
        ``(o [B, T, H, V] in q.dtype, final_state [B, H, K, V] float32)``.
    """
    _check_shapes(q, k, v, g, beta)
    b, t_len, h, dk = k.shape
    dv = v.shape[-1]
    qf = q.float() * _resolve_scale(scale, dk)
    kf, vf, gf, bf = k.float(), v.float(), g.float(), beta.float()
    state = _initial_state(initial_state, q, b, h, dk, dv)
    out = torch.empty(b, t_len, h, dv, dtype=torch.float32, device=q.device)
    for t in range(t_len):
        state = state * gf[:, t].exp().unsqueeze(-1)  # Diag(α_t) S
        pred = torch.einsum("bhk,bhkv->bhv", kf[:, t], state)  # S̃ᵀ k_t
        delta = bf[:, t].unsqueeze(-1) * (vf[:, t] - pred)  # [B, H, V]
        state = state + kf[:, t].unsqueeze(-1) * delta.unsqueeze(-2)
        out[:, t] = torch.einsum("bhk,bhkv->bhv", qf[:, t], state)
    return out.to(q.dtype), state


# ----------------------------------------------------------------------------------------------------
# Decode step
# ----------------------------------------------------------------------------------------------------


def kda_step(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    state: Tensor,
    scale: float | None = None,
) -> Tensor:
    """One decode token for a batch of sequences; ``state`` is updated IN PLACE.

    Args:
        q, k: ``[B, H, K]`` (L2-normalised along K).
        v: ``[B, H, V]``.
        g: ``[B, H, K]`` log-decay.
        beta: ``[B, H]``.
        state: ``[B, H, K, V]`` float32, overwritten with the post-token state.
        scale: query scale, default ``K ** -0.5``.

    Returns:
        ``o [B, H, V]`` in q.dtype.
    """
    _check_shapes(q, k, v, g, beta)
    if state.dtype != torch.float32:
        raise TypeError(f"kda_step state must be float32, got {state.dtype}")
    if state.shape != (*k.shape, v.shape[-1]):
        raise ValueError(f"state has shape {tuple(state.shape)}, expected {(*k.shape, v.shape[-1])}")
    kf = k.float()
    state.mul_(g.float().exp().unsqueeze(-1))  # Diag(α) S
    pred = torch.matmul(kf.unsqueeze(-2), state).squeeze(-2)  # [B, H, V] = S̃ᵀ k
    delta = (v.float() - pred).mul_(beta.float().unsqueeze(-1))  # [B, H, V]
    state.addcmul_(kf.unsqueeze(-1), delta.unsqueeze(-2))  # rank-1 write k δᵀ
    out = torch.matmul(q.float().unsqueeze(-2), state).squeeze(-2)  # [B, H, V]
    return out.mul_(_resolve_scale(scale, k.shape[-1])).to(q.dtype)


# ----------------------------------------------------------------------------------------------------
# Chunked prefill
# ----------------------------------------------------------------------------------------------------


class _ChunkOps(NamedTuple):
    """Per-chunk affine maps of the chunk's start state ``S_0`` (flat batch P = chunks × heads).

    ``S_end = trans @ S_0 + bias`` and ``O = q_eff @ S_0 + o_bias``.
    """

    trans: Tensor  # [P, K, K]
    bias: Tensor  # [P, K, V]
    q_eff: Tensor  # [P, C, K]
    o_bias: Tensor  # [P, C, V]


def _to_chunks(x: Tensor, chunk_size: int) -> Tensor:
    """``[B, T, H, D]`` -> float32 ``[N, B*H, C, D]``, zero-padding T up to a multiple of C (one copy)."""
    b, t_len, h, d = x.shape
    c = chunk_size
    n_full, rem = divmod(t_len, c)
    out = torch.empty(n_full + (rem > 0), b, h, c, d, dtype=torch.float32, device=x.device)  # [N, B, H, C, D]
    if n_full:
        body = x[:, : n_full * c].reshape(b, n_full, c, h, d)  # [B, N_full, C, H, D]
        out[:n_full].copy_(body.permute(1, 0, 3, 2, 4))
    if rem:
        tail = out[n_full]  # [B, H, C, D]
        tail[:, :, rem:].zero_()
        tail[:, :, :rem].copy_(x[:, n_full * c :].permute(0, 2, 1, 3))
    return out.view(out.shape[0], b * h, c, d)


def _from_chunks(o: Tensor, b: int, h: int, t_len: int, dtype: torch.dtype) -> Tensor:
    """Inverse of :func:`_to_chunks`: ``[N, B*H, C, V]`` -> ``[B, T, H, V]`` in ``dtype``, pad dropped."""
    n, _, c, dv = o.shape
    o = o.view(n, b, h, c, dv).permute(1, 0, 3, 2, 4)  # [B, N, C, H, V]
    out = torch.empty(b, t_len, h, dv, dtype=dtype, device=o.device)
    n_full, rem = divmod(t_len, c)
    if n_full:
        out[:, : n_full * c].view(b, n_full, c, h, dv).copy_(o[:, :n_full])
    if rem:
        out[:, n_full * c :].copy_(o[:, n_full, :rem])
    return out


def _bounded_exp(x: Tensor) -> Tensor:
    """``exp(clamp(x, _MIN_LOG_DECAY, 0))`` as float32, computed in place on ``x`` (a temporary).

    The upper clamp keeps every factor ≤ 1 and neutralises the entries callers mask out afterwards (those hold
    positive differences); the lower one keeps exp off its very slow denormal path.
    """
    return x.clamp_(_MIN_LOG_DECAY, 0.0).to(torch.float32).exp_()


def _block_size(chunk_size: int) -> int:
    """Sub-block length b: pairs inside a block are formed elementwise, pairs across blocks by matmul."""
    for cand in (8, 4):
        if chunk_size % cand == 0 and chunk_size > cand:
            return cand
    return chunk_size


def _pair_bytes(chunk_size: int, dk: int) -> int:
    """Rough bytes of pair-term temporaries per chunk and head."""
    block = _block_size(chunk_size)
    return 4 * chunk_size * dk * (block + chunk_size // block + 4)


def _cross_block_pairs(k: Tensor, q: Tensor, bounds: Tensor, local: Tensor) -> tuple[Tensor, Tensor]:
    """Pair terms with ``s`` in an earlier block j than t's block i, as two batched matmuls.

    With ``E_i`` the cumulative decay just before block i, ``s ≤ end(j) < start(i) ≤ t`` splits
    ``e^{G_t − G_s} = e^{G_t − E_i} · e^{E_i − E_{j+1}} · e^{E_{j+1} − G_s}``: every factor is ≤ 1, so nothing
    overflows and an underflowing factor only hides a product that is smaller still.

    Args:
        k, q: ``[P, C, K]``; bounds: ``[P, nb + 1, K]`` float64 ``E_0 = 0, ..., E_nb = G_C``;
        local: ``[P, nb, b, K]`` float64 ``G_t − E_{block(t)}``.

    Returns:
        ``(kk, qk)``, each ``[P, C_t, C_s]``, exactly 0 where ``block(s) ≥ block(t)``.
    """
    p, nb, block, dk = local.shape
    c = nb * block
    near = _bounded_exp(local.clone()).view(p, c, dk)  # [P, C, K] e^{G_t − E_i}
    span = (bounds[:, 1:] - bounds[:, :-1]).unsqueeze(2)  # [P, nb, 1, K] E_{j+1} − E_j
    tail = _bounded_exp(span - local).mul_(k.view(p, nb, block, dk))  # [P, nb, b, K] e^{E_{j+1} − G_s} k_s
    hop = _bounded_exp(bounds[:, :-1].unsqueeze(2) - bounds[:, 1:].unsqueeze(1))  # [P, nb_i, nb_j, K]
    earlier = torch.ones(nb, nb, dtype=torch.bool, device=k.device).tril(-1)  # [nb_i, nb_j]: j < i
    hop.mul_(earlier.to(hop.dtype).unsqueeze(-1))  # e^{E_i − E_{j+1}} for j < i, else exactly 0
    far = hop.unsqueeze(3) * tail.unsqueeze(1)  # [P, nb_i, nb_j, b, K]
    far_t = far.view(p, nb, c, dk).transpose(-1, -2)  # [P, nb_i, K, C_s]
    # [P, nb_i, b, K] @ [P, nb_i, K, C_s] -> [P, nb_i, b, C_s] = [P, C_t, C_s]
    kk = torch.matmul((k * near).view(p, nb, block, dk), far_t).view(p, c, c)
    qk = torch.matmul((q * near).view(p, nb, block, dk), far_t).view(p, c, c)
    return kk, qk


def _in_block_pairs(k: Tensor, q: Tensor, local: Tensor) -> Tensor:
    """Pair terms for ``t, s`` in the same block, from masked differences ``G_t − G_s``.

    Args:
        k, q: ``[P, C, K]``; local: ``[P, nb, b, K]`` float64 ``G_t − E_{block(t)}``, split into float32
        hi + lo parts so the float32 pairwise differences keep full relative accuracy even for large |G|.

    Returns:
        ``[P, nb, b_t, b_s, 2]`` (kk, qk), exactly 0 for ``s > t``.
    """
    p, nb, block, dk = local.shape
    hi = local.float()
    lo = (local - hi).float()
    diff = hi.unsqueeze(3) - hi.unsqueeze(2)  # [P, nb, b_t, b_s, K] = G_t − G_s
    diff.add_(lo.unsqueeze(3)).sub_(lo.unsqueeze(2))
    # s > t: the difference is ≥ 0 (g ≤ 0) and the clamp sends it to 0 before the exp; masked below
    decay = _bounded_exp(diff).mul_(k.view(p, nb, 1, block, dk))  # e^{G_t − G_s} k_s
    rows = torch.stack((k, q), dim=-2).view(p, nb, block, 2, dk)  # [P, nb, b_t, 2, K]
    pairs = torch.matmul(decay, rows.transpose(-1, -2))  # [P, nb, b_t, b_s, K] @ [.., K, 2]
    upper = torch.ones(block, block, dtype=torch.bool, device=k.device).triu(1)  # s > t
    return pairs.masked_fill_(upper.unsqueeze(-1), 0.0)


def _pair_matrices(k: Tensor, q: Tensor, g_cum: Tensor) -> tuple[Tensor, Tensor]:
    """Decayed key-key and query-key products for every causal pair ``s ≤ t`` of each chunk.

    Args:
        k, q: ``[P, C, K]`` float32 (q scaled); g_cum: ``[P, C, K]`` float64 in-chunk cumulative log-decay G.

    Returns:
        ``(kk, qk)``, each ``[P, C, C]``: ``kk[t, s] = Σ_c k_tc k_sc e^{G_tc − G_sc}``, ``qk`` the same
        with ``q_t`` in place of ``k_t``; entries with ``s > t`` are exactly 0.
    """
    p, c, dk = k.shape
    block = _block_size(c)
    nb = c // block
    bounds = F.pad(g_cum[:, block - 1 :: block], (0, 0, 1, 0))  # [P, nb + 1, K]: E_i = G before block i
    local = g_cum.view(p, nb, block, dk) - bounds[:, :-1].unsqueeze(2)  # [P, nb, b, K] G_t − E_block(t)
    if nb > 1:
        kk, qk = _cross_block_pairs(k, q, bounds, local)
    else:
        kk, qk = k.new_zeros(p, c, c), k.new_zeros(p, c, c)
    pairs = _in_block_pairs(k, q, local)  # [P, nb, b_t, b_s, 2]
    for i, mat in enumerate((kk, qk)):
        diag = mat.view(p, nb, block, nb, block).diagonal(dim1=1, dim2=3)  # [P, b_t, b_s, nb] view
        diag.copy_(pairs[..., i].permute(0, 2, 3, 1))
    return kk, qk


def _chunk_operators(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor) -> _ChunkOps:
    """Everything in a chunk that does not depend on its start state, for a flat batch of P chunks.

    Args:
        q, k, g: ``[P, C, K]`` float32 (q scaled); v: ``[P, C, V]``; beta: ``[P, C, 1]``.
    """
    dv = v.shape[-1]
    g_cum = g.double().cumsum(dim=1)  # [P, C, K] G_t, float64 so differences of large sums stay exact
    kk, qk = _pair_matrices(k, q, g_cum)  # [P, C, C] each
    a_mat = kk.mul_(beta)  # A_ts = β_t kk_ts; only the strictly lower part is read
    decay_in = _bounded_exp(g_cum.clone())  # [P, C, K] e^{G_t}
    decay_out = _bounded_exp(g_cum[:, -1:] - g_cum)  # [P, C, K] e^{G_C − G_t}
    rhs = torch.cat((v, k * decay_in), dim=-1).mul_(beta)  # [P, C, V+K] = [βV | β(K⊙e^G)]
    w = torch.linalg.solve_triangular(a_mat, rhs, upper=False, unitriangular=True)  # [W1 | W2]
    mw = torch.matmul(qk, w)  # [P, C, V+K]
    kw = torch.matmul((k * decay_out).transpose(1, 2), w)  # [P, K, V+K]
    trans = torch.diag_embed(decay_in[:, -1]) - kw[..., dv:]  # [P, K, K]
    q_eff = (q * decay_in).sub_(mw[..., dv:])  # [P, C, K]
    return _ChunkOps(trans, kw[..., :dv].contiguous(), q_eff, mw[..., :dv].contiguous())


def _propagate(trans: Tensor, bias: Tensor, state: Tensor) -> Tensor:
    """Run ``S ← trans_i @ S + bias_i`` over n chunks.

    Args:
        trans: ``[n, H', K, K]``; bias: ``[n, H', K, V]``; state: ``[H', K, V]``.

    Returns:
        ``[n + 1, H', K, V]``: the start state of every chunk followed by the final state.
    """
    n = trans.shape[0]
    states = bias.new_empty(n + 1, *state.shape)
    states[0] = state
    for i in range(n):
        torch.baddbmm(bias[i], trans[i], states[i], out=states[i + 1])
    return states


def _scan(chunks: list[Tensor], state: Tensor, out: Tensor, chunk_states: Tensor | None) -> Tensor:
    """Chunked KDA over one slice of heads, in groups of chunks.

    Args:
        chunks: q (scaled), k, v, g as ``[N, H', C, D]`` and beta as ``[N, H', C, 1]``, float32.
        state: ``[H', K, V]`` start state (not modified).
        out: ``[N, H', C, V]``, written with the outputs.
        chunk_states: ``[N', H', K, V]`` or None; filled with the state after each of the first N' chunks.

    Returns:
        The final state ``[H', K, V]``.
    """
    n_chunks, nh, c, dk = chunks[0].shape
    dv = chunks[2].shape[-1]
    group = max(1, _PAIR_BUDGET_BYTES // (nh * _pair_bytes(c, dk)))
    for n0 in range(0, n_chunks, group):
        sl = slice(n0, min(n0 + group, n_chunks))
        n = sl.stop - n0
        ops = _chunk_operators(*(x[sl].reshape(n * nh, c, -1) for x in chunks))  # flat [n*H', C, D]
        states = _propagate(ops.trans.view(n, nh, dk, dk), ops.bias.view(n, nh, dk, dv), state)
        starts = states[:-1].view(n * nh, dk, dv)
        out[sl] = torch.baddbmm(ops.o_bias, ops.q_eff, starts).view(n, nh, c, dv)
        if chunk_states is not None and n0 < chunk_states.shape[0]:
            ends = chunk_states[sl]  # [<= n, H', K, V], clipped at N'
            ends.copy_(states[1 : 1 + ends.shape[0]])
        state = states[-1]
    return state


def chunk_kda(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    initial_state: Tensor | None = None,
    scale: float | None = None,
    chunk_size: int = 64,
    return_chunk_states: bool = False,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Chunked KDA for prefill; same semantics as :func:`naive_recurrent_kda`.

    Derivation. Inside a chunk of C tokens starting from state ``S_0`` let ``G_t = Σ_{s≤t} g_s`` (per channel)
    and ``u_t = β_t (v_t − S̃_tᵀ k_t)``. Unrolling the recurrence,
    ``S_t = e^{G_t} ⊙ S_0 + Σ_{s≤t} (k_s ⊙ e^{G_t − G_s}) u_sᵀ`` (row-wise decay), hence::

        (I + A) u = β⊙V − β⊙(K⊙e^G) S_0,     A_ts = β_t Σ_c k_tc k_sc e^{G_tc − G_sc}   (s < t, else 0)
        O     = (scale·Q ⊙ e^G) S_0 + (M ⊙ tril) u,   M_ts = Σ_c scale·q_tc k_sc e^{G_tc − G_sc}
        S_end = e^{G_C} ⊙ S_0 + (K ⊙ e^{G_C − G})ᵀ u

    Writing ``u = W1 − W2 S_0`` with ``[W1 | W2] = (I + A)^{-1} [β⊙V | β⊙(K⊙e^G)]`` (one unit-lower triangular
    solve), each chunk is affine in ``S_0``: ``S_end = (Diag(e^{G_C}) − Kdᵀ W2) S_0 + Kdᵀ W1`` and
    ``O = (Q⊙e^G − M W2) S_0 + M W1`` with ``Kd = K ⊙ e^{G_C − G}``. These operators are built for many chunks
    at once, in groups that bound the temporaries (``_PAIR_BUDGET_BYTES``); only the ``S ← T S + B``
    recurrence (one small batched matmul per chunk) runs sequentially, then a group's outputs are one matmul.

    Pair terms ``e^{G_t − G_s}`` (``s ≤ t``) never use ``e^{G_t}·e^{−G_s}``. The chunk is cut into blocks of
    b tokens. Inside a block they come from pairwise differences (float64-exact; the ``s > t`` entries are
    clamped to 0 before the exp and masked after it). Across blocks they factor through block boundaries,
    ``e^{G_t − E_i} · e^{E_i − E_{j+1}} · e^{E_{j+1} − G_s}`` with every factor ≤ 1, so they become matmuls
    instead of a ``[C, C, K]`` tensor. Every lone exponential (``e^G``, ``e^{G_C − G}``) is ≤ 1 as well.

    The tail is padded with ``k = v = g = beta = 0`` tokens, which leave the state exactly unchanged.

    Args:
        q, k: ``[B, T, H, K]`` (L2-normalised along K).
        v: ``[B, T, H, V]``.
        g: ``[B, T, H, K]`` log-decay, ``g ≤ 0``.
        beta: ``[B, T, H]``.
        initial_state: ``[B, H, K, V]`` or None for zeros (not modified).
        scale: query scale, default ``K ** -0.5``.
        chunk_size: tokens per chunk C.
        return_chunk_states: also return the state after each of the ``N = T // C`` full chunks.

    Returns:
        ``(o, final_state, chunk_states)``: o ``[B, T, H, V]`` in q.dtype, final_state ``[B, H, K, V]``
        float32, chunk_states ``[B, N, H, K, V]`` float32 or None.
    """
    _check_shapes(q, k, v, g, beta)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    b, t_len, h, dk = k.shape
    dv = v.shape[-1]
    c = chunk_size
    state = _initial_state(initial_state, q, b, h, dk, dv).view(b * h, dk, dv)
    qc, kc, vc, gc = (_to_chunks(x, c) for x in (q, k, v, g))  # [N, B*H, C, D] each
    qc.mul_(_resolve_scale(scale, dk))
    bc = _to_chunks(beta.unsqueeze(-1), c)  # [N, B*H, C, 1]
    out = torch.empty(qc.shape[0], b * h, c, dv, dtype=torch.float32, device=q.device)
    n_full = t_len // c
    chunk_states = None
    if return_chunk_states:
        chunk_states = torch.empty(n_full, b * h, dk, dv, dtype=torch.float32, device=q.device)
    # heads are independent; they are sliced only when one chunk of all of them exceeds the budget
    heads = max(1, _PAIR_BUDGET_BYTES // _pair_bytes(c, dk))
    for h0 in range(0, b * h, heads):
        hs = slice(h0, h0 + heads)
        ends = None if chunk_states is None else chunk_states[:, hs]
        state[hs] = _scan([x[:, hs] for x in (qc, kc, vc, gc, bc)], state[hs], out[:, hs], ends)
    o = _from_chunks(out, b, h, t_len, q.dtype)
    if chunk_states is not None:
        chunk_states = chunk_states.view(n_full, b, h, dk, dv).permute(1, 0, 2, 3, 4).contiguous()
    return o, state.view(b, h, dk, dv), chunk_states
