"""A profile-driven stand-in for the model: it sleeps for the modelled time and writes deterministic state.

With mock engines the paper's topology runs for real on a laptop, scaled in time and bytes: the engine,
block pool, prefix cache, export/import and wire format are the real ones; only the forward pass is
replaced. Cost model (``T`` = the profile's prefill time, all durations × ``time_scale``):

- prefill of tokens [start, end): ``T(end) - T(start) + T(0)`` seconds, i.e. ``a + b·(end-start) +
  c·(end²-start²)`` for a quadratic ``T = a + b·l + c·l²``; one chunk from 0 costs exactly ``T(l)``.
  The time is spent in equal slices, one per layer, and the layer hook runs after each slice, so KV
  streams out while "later layers compute".
- decode of B sequences: ``ceil(B / BS_max) · T_decode`` seconds: a step costs the same at any batch up
  to the profile's ``BS_max`` (the SLO step time), and a larger batch runs in waves.

State written (so transfers move real, checkable bytes): full-attention rows are a function of (token
id, position) and are never read back. Each linear layer keeps the running sum ``s = Σ term(token,
position)`` in its "hot" cells: ``[h, 0, 0]`` of every recurrent head (``s·w mod p``, p < 2^23 prime:
exact in float32) and channel 0 of every head-sized block of conv channels (``s·w mod 251``: exact even
in bf16), with a distinct weight ``w`` per (layer, cell); other cells stay as they are (zero). Sums are
associative, so chunked, one-shot, snapshot-resumed and imported prefills agree. Prefill returns a
snapshot at every requested boundary, a full state copy each as in the real model (bound the CPU cost
with `EngineConfig.snapshot_every_blocks`). The config has no EOS: outputs run to max_new_tokens.

Next token: ``(31·last + 17·position + digest) mod vocab``, with ``digest`` the w-weighted sum of the
slot's hot cells, so a lost, zeroed, moved or swapped piece of linear state changes the tokens.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import astuple, dataclass

import torch
from torch import Tensor

from prfaas.kv.cache import HybridCache
from prfaas.kv.snapshots import LinearSnapshot
from prfaas.kv.spec import HybridSpec
from prfaas.model.config import FULL, LINEAR, ModelConfig
from prfaas.model.kimi_linear import DecodeInput, LayerHook, PrefillInput, PrefillOutput
from prfaas.sched.profile import HardwareProfile
from prfaas.sched.scenario import paper_h20, paper_h200

Sleep = Callable[[float], None]

BYTES_TOLERANCE = 0.05  # largest relative error of the scaled KV sizes
FLOAT32_BYTES = 4
KDA_PER_MLA = 3  # the 3:1 KDA:MLA layer pattern
MAX_FULL_LAYERS = 4
MAX_HEAD_DIM = 128
CONV_KERNEL = 4
KV_SLOPE_TOKENS = 65_536  # the profile's bytes per token: slope of S_kv over [0, this]
STATE_MODULUS = 8_388_593  # prime < 2^23: recurrent hot cells are exact float32 integers
CONV_MODULUS = 251  # prime < 2^8: conv hot cells are exact in any float dtype
POSITION_MIX = 2_654_435_761
PEAK_LOGIT = 20.0
PAPER_ROLES: dict[str, Callable[[], HardwareProfile]] = {"prfaas": paper_h200, "pd": paper_h20}


@dataclass(frozen=True, slots=True)
class MockSettings:
    """What a mock engine imitates: one instance type, scaled in time and in KV bytes."""

    profile: HardwareProfile
    time_scale: float = 1.0  # multiplies every modelled duration
    bytes_scale: float = 1.0  # multiplies KV bytes per token and the fixed linear-state bytes
    # Multiplies the decode step time on top of time_scale. Serving benchmarks generate k x fewer output
    # tokens than the paper's and stretch each step k x, so a request holds its decode slot as long and the
    # decode capacity in requests/s is the paper's, with k x fewer token messages to stream.
    decode_step_scale: float = 1.0
    # One mock token stands for this many paper tokens: prefill time and KV bytes per token are the paper's
    # for `token_scale` x the length, so serving benchmarks send k x shorter prompts (k x less per-token
    # work in the services) at the same modelled cost.
    token_scale: int = 1
    vocab_size: int = 512

    def __post_init__(self) -> None:
        if not (self.time_scale >= 0 and math.isfinite(self.time_scale)):
            raise ValueError(f"time_scale must be a finite number >= 0 (e.g. 0.01), got {self.time_scale}")
        if not (self.decode_step_scale > 0 and math.isfinite(self.decode_step_scale)):
            raise ValueError(f"decode_step_scale must be a finite number > 0, got {self.decode_step_scale}")
        if self.token_scale < 1:
            raise ValueError(f"token_scale must be an integer >= 1, got {self.token_scale}")
        if not (0 < self.bytes_scale <= 1):
            raise ValueError(f"bytes_scale must be in (0, 1] (e.g. 0.01), got {self.bytes_scale}")

    @property
    def target_bytes_per_token(self) -> float:
        p = self.profile
        slope = (p.kv_bytes(KV_SLOPE_TOKENS) - p.kv_bytes(0)) / KV_SLOPE_TOKENS
        return slope * self.bytes_scale * self.token_scale

    @property
    def target_fixed_bytes(self) -> float:
        return self.profile.kv_bytes(0) * self.bytes_scale


def paper_mock(
    role: str, time_scale: float, bytes_scale: float, decode_step_scale: float = 1.0, token_scale: int = 1
) -> MockSettings:
    """Role "prfaas" = the paper's 8xH200 (prefill only), "pd" = 8xH20. Both share the KV law, hence one
    `mock_config` and one fingerprint: their states are interchangeable."""
    make = PAPER_ROLES.get(role)
    if make is None:
        raise ValueError(f"unknown role {role!r}: use one of {sorted(PAPER_ROLES)}")
    return MockSettings(make(), time_scale, bytes_scale, decode_step_scale, token_scale)


@dataclass(frozen=True, slots=True)
class MockLayout:
    """The layer shapes of a `mock_config`."""

    num_full_layers: int
    full_token_dim: int  # MLA kv_lora_rank (qk_rope_head_dim = 0)
    linear_num_heads: int
    linear_head_dim: int


def mock_layout(settings: MockSettings) -> MockLayout:
    """Layer shapes whose float32 `HybridSpec` reproduces the scaled profile (`mock_config` checks it).

    Bytes per token = n_full · D · 4 with D = round(target / (4·n_full)); fixed bytes = 3·n_full ·
    H·d·(4·d + 4·3·(W-1)) with H = round(per-layer target / per-head bytes). Each choice takes the
    largest n_full ≤ 4 (then head dim d ≤ 128) whose fit is within 1%, else the closest fit.
    """
    per_token = settings.target_bytes_per_token
    n_full, dim = _pick(per_token, {n: FLOAT32_BYTES * n for n in range(1, MAX_FULL_LAYERS + 1)})
    per_layer = settings.target_fixed_bytes / (KDA_PER_MLA * n_full)
    per_head = {d: FLOAT32_BYTES * d * (d + 3 * (CONV_KERNEL - 1)) for d in range(1, MAX_HEAD_DIM + 1)}
    head_dim, heads = _pick(per_layer, per_head)
    return MockLayout(n_full, dim, heads, head_dim)


def _pick(target: float, unit_bytes: dict[int, int]) -> tuple[int, int]:
    """(key, count = round(target / unit_bytes[key])): the largest key within 1%, else the closest."""
    counts = {key: max(1, round(target / unit)) for key, unit in unit_bytes.items()}
    fits = [(abs(counts[key] * unit - target) / target, key, counts[key]) for key, unit in unit_bytes.items()]
    good = [f for f in fits if f[0] <= 0.01]
    _, key, count = max(good, key=lambda f: f[1]) if good else min(fits)
    return key, count


def _check_fit(what: str, got: float, target: float, settings: MockSettings) -> None:
    error = abs(got - target) / target
    if error > BYTES_TOLERANCE:
        need = settings.bytes_scale * (FLOAT32_BYTES / 2 / BYTES_TOLERANCE) / target
        raise ValueError(
            f"bytes_scale {settings.bytes_scale:g} asks for {target:.1f} {what}; float32 rows come in "
            f"{FLOAT32_BYTES}-byte steps, so the closest layout ({got:.0f}) is {error:.1%} off "
            f"(limit {BYTES_TOLERANCE:.0%}): use bytes_scale >= {need:.3g}"
        )


def mock_config(settings: MockSettings) -> ModelConfig:
    """A 3:1 KDA:MLA Kimi Linear config sized by `mock_layout`; no EOS token (outputs run to length)."""
    n_full, dim, heads, head_dim = astuple(mock_layout(settings))
    n_layers = (KDA_PER_MLA + 1) * n_full
    raw = {
        "model_type": "kimi_linear",
        "vocab_size": settings.vocab_size,
        "hidden_size": 8,
        "intermediate_size": 8,
        "num_hidden_layers": n_layers,
        "layer_types": ([LINEAR] * KDA_PER_MLA + [FULL]) * n_full,
        "first_k_dense_replace": n_layers,
        "num_attention_heads": 1,
        "q_lora_rank": None,
        "kv_lora_rank": dim,
        "qk_nope_head_dim": 1,
        "qk_rope_head_dim": 0,
        "v_head_dim": 1,
        "linear_attn_config": {
            "num_heads": heads,
            "head_dim": head_dim,
            "short_conv_kernel_size": CONV_KERNEL,
        },
        "model_max_length": 1 << 21,
    }
    cfg = ModelConfig.from_hf_dict(raw)
    spec = HybridSpec.from_config(cfg, block_size=1, dtype=torch.float32)
    _check_fit("KV bytes per token", spec.full_bytes_per_token, settings.target_bytes_per_token, settings)
    _check_fit("fixed linear-state bytes", spec.linear_state_bytes, settings.target_fixed_bytes, settings)
    return cfg


class MockModel:
    """A `ModelRunner` that follows `settings.profile` instead of computing (see the module docstring)."""

    def __init__(self, config: ModelConfig, settings: MockSettings, sleep: Sleep = time.sleep) -> None:
        if LINEAR not in config.layer_types:
            raise ValueError("MockModel keeps its state in linear layers: build the config with mock_config")
        self.config, self.settings, self._sleep = config, settings, sleep

    @classmethod
    def from_settings(cls, settings: MockSettings, sleep: Sleep = time.sleep) -> MockModel:
        return cls(mock_config(settings), settings, sleep)

    def prefill_seconds(self, start_tokens: int, end_tokens: int) -> float:
        """Scaled wall time of a prefill chunk: T(end) - T(start) + T(0)."""
        t = self.settings.profile.prefill_s
        k = self.settings.token_scale
        return max(0.0, t(end_tokens * k) - t(start_tokens * k) + t(0)) * self.settings.time_scale

    def decode_seconds(self, batch_size: int) -> float:
        """Scaled wall time of one decode step for `batch_size` sequences."""
        cap = self.settings.profile.decode
        if cap is None:
            raise RuntimeError(f"{self.settings.profile.name} has no decode capacity: prefill only")
        waves = math.ceil(batch_size / cap.max_batch_size)
        return waves * cap.step_s * self.settings.time_scale * self.settings.decode_step_scale

    def prefill(self, cache: HybridCache, inp: PrefillInput, hook: LayerHook | None = None) -> PrefillOutput:
        end = inp.start + inp.token_ids.shape[0]
        positions = torch.arange(inp.start, end)
        sums = _token_terms(inp.token_ids, positions).cumsum(0)  # [T] s(after token) - s(start)
        snapshots = _snapshots(cache, inp, sums)
        rows = _full_rows(inp.token_ids, positions, cache.spec.full_token_dim)  # [T, D]
        slice_s = self.prefill_seconds(inp.start, end) / len(cache.spec.layers)
        slots = torch.tensor([inp.slot])
        for layer in cache.spec.layers:
            self._sleep(slice_s)
            if layer.kind == FULL:
                cache.write_full(layer.slot, inp.block_table, inp.start, rows)
            else:
                _advance(cache, slots, sums[-1:], range(layer.slot, layer.slot + 1))
            if hook is not None:
                hook(layer)
        digest = _digest(*_hot_cells(cache, slots, range(len(cache.recurrent))))
        logits = self._logits(inp.token_ids[-1:], positions[-1:], digest)
        return PrefillOutput(logits[0], snapshots)

    def decode(self, cache: HybridCache, inp: DecodeInput) -> Tensor:
        """Returns logits [B, vocab] peaked at each sequence's next token."""
        self._sleep(self.decode_seconds(inp.token_ids.shape[0]))
        bs = cache.spec.block_size
        flat = inp.block_tables[torch.arange(len(inp.slots)), inp.positions // bs] * bs + inp.positions % bs
        rows = _full_rows(inp.token_ids, inp.positions, cache.spec.full_token_dim)  # [B, D]
        for layer in cache.spec.full_layers:
            cache.write_full_batch(layer.slot, flat, rows)
        terms = _token_terms(inp.token_ids, inp.positions)  # [B]
        digest = _digest(*_advance(cache, inp.slots, terms, range(len(cache.recurrent))))
        return self._logits(inp.token_ids, inp.positions, digest)

    def _logits(self, last_ids: Tensor, positions: Tensor, digest: Tensor) -> Tensor:
        vocab = self.config.vocab_size
        nxt = (31 * last_ids.long() + 17 * positions + digest) % vocab  # [B]
        logits = torch.zeros(nxt.shape[0], vocab)
        logits[torch.arange(nxt.shape[0]), nxt] = PEAK_LOGIT
        return logits


def _token_terms(token_ids: Tensor, positions: Tensor) -> Tensor:
    """[T] int64 contribution of each (token, position) to the running sum, each < STATE_MODULUS."""
    mix = (positions.long() * POSITION_MIX) % STATE_MODULUS + 1
    return ((token_ids.long() + 1) * mix) % STATE_MODULUS


def _full_rows(token_ids: Tensor, positions: Tensor, dim: int) -> Tensor:
    """[T, D] full-attention rows derived from (token id, position)."""
    base = (token_ids.long() * 1_000_003 + positions.long()) % STATE_MODULUS
    return (base.unsqueeze(1) + torch.arange(dim)).float()


def _weights(layers: range, num_cells: int) -> Tensor:
    """[L, 1, N] distinct weights of the N hot cells of each of `layers`."""
    return torch.arange(layers.start, layers.stop).view(-1, 1, 1) * num_cells + torch.arange(1, num_cells + 1)


def _advanced(hot_rec: Tensor, hot_conv: Tensor, delta: Tensor, layers: range) -> tuple[Tensor, Tensor]:
    """Hot cells hot_rec [L, B, H], hot_conv [L, B, 3H] (cell w holds s·w mod m) after s += delta [B]."""
    rec = hot_rec.long() + (delta % STATE_MODULUS).view(1, -1, 1) * _weights(layers, hot_rec.shape[2])
    conv = hot_conv.long() + (delta % CONV_MODULUS).view(1, -1, 1) * _weights(layers, hot_conv.shape[2])
    return (rec % STATE_MODULUS).to(hot_rec.dtype), (conv % CONV_MODULUS).to(hot_conv.dtype)


def _hot_cells(cache: HybridCache, slots: Tensor, layers: range) -> tuple[Tensor, Tensor]:
    """Hot cells of sequence slots [B] in linear `layers`: recurrent [L, B, H], conv [L, B, 3H]."""
    d = cache.spec.linear_state_shape[2]
    rec = torch.stack([cache.recurrent[i][slots, :, 0, 0] for i in layers])
    return rec, torch.stack([cache.conv[i][slots, ::d, 0] for i in layers])


def _advance(cache: HybridCache, slots: Tensor, delta: Tensor, layers: range) -> tuple[Tensor, Tensor]:
    """s += delta [B] for sequence slots [B] in linear `layers`; returns the new hot cells."""
    d = cache.spec.linear_state_shape[2]
    rec, conv = _advanced(*_hot_cells(cache, slots, layers), delta, layers)
    for i, layer in enumerate(layers):
        cache.recurrent[layer][slots, :, 0, 0], cache.conv[layer][slots, ::d, 0] = rec[i], conv[i]
    return rec, conv


def _digest(hot_rec: Tensor, hot_conv: Tensor) -> Tensor:
    """[B] weighted sum of the hot cells of all linear layers: moved or swapped cells change it too."""
    layers = range(hot_rec.shape[0])
    rec = (hot_rec.long() * _weights(layers, hot_rec.shape[2])).sum((0, 2))
    return rec + (hot_conv.long() * _weights(layers, hot_conv.shape[2])).sum((0, 2))


def _snapshots(cache: HybridCache, inp: PrefillInput, sums: Tensor) -> list[tuple[int, LinearSnapshot]]:
    """Snapshots at every multiple of `inp.snapshot_every` in (start, end], from the state at start."""
    every, end = inp.snapshot_every, inp.start + sums.shape[0]
    bounds = range(0) if every is None else range((inp.start // every + 1) * every, end + 1, every)
    if not bounds:
        return []
    base = cache.snapshot(inp.slot)
    return [(b, _snapshot_after(base, sums[b - inp.start - 1 : b - inp.start])) for b in bounds]


def _snapshot_after(base: LinearSnapshot, delta: Tensor) -> LinearSnapshot:
    """`base` (recurrent [L, H, K, V], conv [L, C, W-1]) with every layer's s advanced by delta [1]."""
    rec, conv, d = base.recurrent.clone(), base.conv.clone(), base.recurrent.shape[-1]
    new_rec, new_conv = _advanced(rec[:, None, :, 0, 0], conv[:, None, ::d, 0], delta, range(rec.shape[0]))
    rec[:, :, 0, 0], conv[:, ::d, 0] = new_rec[:, 0], new_conv[:, 0]
    return LinearSnapshot(rec, conv)
