"""Versioned, self-describing wire format for one sequence's hybrid state.

A transfer is a manifest plus chunks. The chunk plan is a pure function of the manifest: for every
layer of the spec, in layer order, the rows it contributes. Rows are tokens start..end-1 for a
full-attention layer, cut at absolute multiples of `chunk_tokens` (the sender picks a divisor of its
prefill chunk, so a piece never waits for a later prefill chunk), and heads (recurrent state) or
channels (conv tail) for a linear layer, cut into pieces of at most `chunk_bytes`. Both ends derive
the same plan, so the receiver knows exactly which chunks complete the state and can apply them in
any order.

Encoding: `MAGIC | u32 header length | JSON header | raw payload`. The payload is the tensor's
contiguous bytes (no copy on the way out; `torch.frombuffer` on the way in); the header names the
request, epoch, sequence number, layer, kind, row range, dtype, shape and a CRC32 of the payload.
"""

from __future__ import annotations

import itertools
import json
import struct
import warnings
import zlib
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from prfaas.kv.spec import LAYOUT_VERSION, HybridSpec

CHUNK_MAGIC = b"PKVC"
MANIFEST_MAGIC = b"PKVM"
WIRE_VERSION = 1
DEFAULT_CHUNK_BYTES = 4 << 20

FULL_KV = "full_kv"
RECURRENT = "recurrent"
CONV = "conv"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class WireError(ValueError):
    """A manifest or chunk is malformed, corrupt, from another model, or unexpected."""


@dataclass(frozen=True, slots=True)
class ChunkKey:
    layer: int
    kind: str
    row_start: int
    row_end: int


@dataclass(frozen=True, slots=True)
class KvManifest:
    fingerprint: str
    request_id: str
    epoch: int
    start_tokens: int  # tokens the receiver already holds (its cached prefix)
    num_tokens: int  # tokens the state covers (the prompt length)
    chunk_bytes: int  # size limit for linear-state pieces
    chunk_tokens: int  # full-attention pieces end at multiples of this
    num_chunks: int
    version: int = WIRE_VERSION

    def plan(self, spec: HybridSpec) -> list[ChunkKey]:
        return plan_chunks(spec, self.start_tokens, self.num_tokens, self.chunk_bytes, self.chunk_tokens)

    def encode(self) -> bytes:
        return MANIFEST_MAGIC + json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes) -> KvManifest:
        if not data.startswith(MANIFEST_MAGIC):
            raise WireError("not a KV manifest (bad magic)")
        try:
            fields = json.loads(data[len(MANIFEST_MAGIC) :])
            manifest = cls(**fields)
        except (ValueError, TypeError) as exc:
            raise WireError(f"malformed KV manifest: {exc}") from exc
        if manifest.version != WIRE_VERSION:
            raise WireError(f"KV manifest version {manifest.version}, this build speaks {WIRE_VERSION}")
        return manifest


@dataclass(frozen=True, slots=True)
class KvChunk:
    request_id: str
    epoch: int
    seq: int
    key: ChunkKey
    tensor: Tensor

    def encode(self) -> list[bytes | memoryview]:
        """Header bytes and a zero-copy view of the payload (send both, in order)."""
        payload = _bytes_view(self.tensor)
        header = {
            "v": WIRE_VERSION,
            "rid": self.request_id,
            "epoch": self.epoch,
            "seq": self.seq,
            "layer": self.key.layer,
            "kind": self.key.kind,
            "rows": [self.key.row_start, self.key.row_end],
            "dtype": str(self.tensor.dtype).removeprefix("torch."),
            "shape": list(self.tensor.shape),
            "crc": zlib.crc32(payload),
        }
        blob = json.dumps(header).encode()
        return [CHUNK_MAGIC + struct.pack("<I", len(blob)) + blob, payload]

    def to_bytes(self) -> bytes:
        return b"".join(self.encode())  # one copy: header + payload view

    @classmethod
    def decode(cls, data: bytes | memoryview) -> KvChunk:
        view = memoryview(data)
        if bytes(view[:4]) != CHUNK_MAGIC or len(view) < 8:
            raise WireError("not a KV chunk (bad magic)")
        (size,) = struct.unpack("<I", view[4:8])
        try:
            h = json.loads(bytes(view[8 : 8 + size]))
            payload = view[8 + size :]
            if h["v"] != WIRE_VERSION:
                raise WireError(f"KV chunk version {h['v']}, this build speaks {WIRE_VERSION}")
            if zlib.crc32(payload) != h["crc"]:
                raise WireError(f"KV chunk {h['seq']} of {h['rid']}: checksum mismatch (corrupted in transit)")
            tensor = _tensor_from(payload, h["dtype"], h["shape"])
            key = ChunkKey(int(h["layer"]), str(h["kind"]), int(h["rows"][0]), int(h["rows"][1]))
            return cls(str(h["rid"]), int(h["epoch"]), int(h["seq"]), key, tensor)
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:
            if isinstance(exc, WireError):
                raise
            raise WireError(f"malformed KV chunk header: {exc}") from exc


def _bytes_view(t: Tensor) -> memoryview:
    flat = t.contiguous().reshape(-1)
    array: Any = flat.view(torch.uint8).numpy()
    return memoryview(array)


def _tensor_from(payload: memoryview, dtype_name: str, shape: list[int]) -> Tensor:
    dtype = _DTYPES.get(dtype_name)
    if dtype is None:
        raise WireError(f"KV chunk dtype {dtype_name!r} is not supported")
    if not payload:
        return torch.empty(shape, dtype=dtype)
    with warnings.catch_warnings():  # read-only wire buffers: the importer copies, never writes in place
        warnings.simplefilter("ignore", UserWarning)
        return torch.frombuffer(payload, dtype=dtype).view(shape)


def row_bytes(spec: HybridSpec, kind: str) -> int:
    itemsize = torch.empty((), dtype=spec.dtype).element_size()
    _, k, v = spec.linear_state_shape
    if kind == FULL_KV:
        return spec.full_token_dim * itemsize
    if kind == RECURRENT:
        return k * v * 4
    return spec.linear_conv_shape[1] * itemsize


def plan_chunks(spec: HybridSpec, start: int, end: int, chunk_bytes: int, chunk_tokens: int) -> list[ChunkKey]:
    """The deterministic chunk plan for the state of tokens start..end-1 (linear state at `end`)."""
    if not 0 <= start < end:
        raise WireError(f"bad token range [{start}, {end})")
    if chunk_bytes <= 0 or chunk_tokens <= 0:
        raise WireError("chunk_bytes and chunk_tokens must be positive")
    keys: list[ChunkKey] = []
    h, channels = spec.linear_state_shape[0], spec.linear_conv_shape[0]
    cuts = [start, *range((start // chunk_tokens + 1) * chunk_tokens, end, chunk_tokens), end]
    for layer in spec.layers:
        if layer.kind == "full_attention":
            keys.extend(ChunkKey(layer.index, FULL_KV, a, b) for a, b in itertools.pairwise(cuts))
            continue
        for kind, rows in ((RECURRENT, h), (CONV, channels)):
            step = max(1, chunk_bytes // row_bytes(spec, kind))
            keys.extend(ChunkKey(layer.index, kind, a, min(a + step, rows)) for a in range(0, rows, step))
    return keys


def pick_chunk_tokens(spec: HybridSpec, chunk_bytes: int, prefill_tokens: int) -> int:
    """The largest block multiple dividing the prefill chunk whose full-attention rows fit `chunk_bytes`."""
    blocks = prefill_tokens // spec.block_size
    fits = max(1, chunk_bytes // (row_bytes(spec, FULL_KV) * spec.block_size))
    return max(d for d in range(1, blocks + 1) if blocks % d == 0 and d <= fits) * spec.block_size


def check_fingerprint(spec: HybridSpec, manifest: KvManifest) -> None:
    if manifest.fingerprint != spec.fingerprint():
        raise WireError(
            f"model fingerprint mismatch: sender {manifest.fingerprint}, receiver {spec.fingerprint()} "
            f"(layout v{LAYOUT_VERSION}, block size {spec.block_size}, dtype {spec.dtype}): "
            "both ends must load the same checkpoint with the same dtype and block size"
        )
