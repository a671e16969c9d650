"""Encoding a cached block and its linear snapshot for the cluster's cache pool.

A block blob holds the block's rows of every full-attention layer (`[n_full, block_size, D]`); a
snapshot blob holds the linear state at the block's end. Both are safetensors byte strings (no
pickle) carrying the model fingerprint, so a pool shared by different models cannot mix them up.
"""

from __future__ import annotations

import json

from safetensors import SafetensorError
from safetensors.torch import load, save
from torch import Tensor

from prfaas.kv.snapshots import LinearSnapshot
from prfaas.kv.spec import HybridSpec
from prfaas.kv.wire import WireError


def encode_block(spec: HybridSpec, kv: Tensor) -> bytes:
    return save({"kv": kv.contiguous()}, metadata={"fingerprint": spec.fingerprint()})


def encode_snapshot(spec: HybridSpec, snap: LinearSnapshot) -> bytes:
    tensors = {"recurrent": snap.recurrent.contiguous(), "conv": snap.conv.contiguous()}
    return save(tensors, metadata={"fingerprint": spec.fingerprint()})


def _fingerprint(blob: bytes) -> str | None:
    size = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + size])
    return header.get("__metadata__", {}).get("fingerprint")


def _load(spec: HybridSpec, blob: bytes, names: tuple[str, ...]) -> dict[str, Tensor]:
    try:
        fingerprint = _fingerprint(blob)
        tensors = load(blob)
    except (SafetensorError, ValueError, UnicodeDecodeError) as exc:
        raise WireError(f"malformed pool blob: {exc}") from exc
    if fingerprint != spec.fingerprint():
        raise WireError(f"pool blob from model {fingerprint}, this engine is {spec.fingerprint()}")
    if set(tensors) != set(names):
        raise WireError(f"pool blob holds {sorted(tensors)}, expected {sorted(names)}")
    return tensors


def decode_block(spec: HybridSpec, blob: bytes) -> Tensor:
    kv = _load(spec, blob, ("kv",))["kv"]
    expected = (len(spec.full_layers), spec.block_size, spec.full_token_dim)
    if tuple(kv.shape) != expected:
        raise WireError(f"pool block has shape {tuple(kv.shape)}, this model needs {expected}")
    return kv


def decode_snapshot(spec: HybridSpec, blob: bytes) -> LinearSnapshot:
    t = _load(spec, blob, ("recurrent", "conv"))
    n = len(spec.linear_layers)
    if tuple(t["recurrent"].shape) != (n, *spec.linear_state_shape) or tuple(t["conv"].shape) != (
        n,
        *spec.linear_conv_shape,
    ):
        raise WireError("pool snapshot does not match this model's linear state layout")
    return LinearSnapshot(t["recurrent"], t["conv"])
