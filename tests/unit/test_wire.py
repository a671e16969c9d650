"""Wire format: the deterministic chunk plan, encoding round trips, and layer-wise streaming."""

from __future__ import annotations

import pytest
import torch

from prfaas.engine.engine import Engine, EngineConfig, ExportRequest
from prfaas.engine.sampling import SamplingParams
from prfaas.kv.spec import HybridSpec
from prfaas.kv.wire import (
    CONV,
    FULL_KV,
    RECURRENT,
    ChunkKey,
    KvChunk,
    KvManifest,
    WireError,
    pick_chunk_tokens,
    plan_chunks,
)
from prfaas.model.checkpoint import load_checkpoint
from prfaas.model.tiny import ensure_tiny, tiny_config


def spec() -> HybridSpec:
    return HybridSpec.from_config(tiny_config(), block_size=16)


def test_spec_follows_the_layer_pattern() -> None:
    s = spec()
    assert [layer.index for layer in s.full_layers] == [3, 7]
    assert [layer.slot for layer in s.linear_layers] == [0, 1, 2, 3, 4, 5]
    assert s.full_bytes_per_token == 2 * (64 + 16) * 4
    assert s.linear_state_bytes == 6 * (4 * 64 * 64 * 4 + 768 * 3 * 4)
    assert s.state_bytes(100) == 100 * s.full_bytes_per_token + s.linear_state_bytes


def test_plan_cuts_rows_by_size_limit() -> None:
    s = spec()
    limit = 16 * 1024  # bytes per linear piece
    plan = plan_chunks(s, 16, 60, limit, 32)
    full3 = [k for k in plan if k.layer == 3]
    assert full3 == [ChunkKey(3, FULL_KV, 16, 32), ChunkKey(3, FULL_KV, 32, 60)]  # cut at multiples of 32
    rec0 = [k for k in plan if k.layer == 0 and k.kind == RECURRENT]
    assert rec0 == [
        ChunkKey(0, RECURRENT, 0, 1),
        ChunkKey(0, RECURRENT, 1, 2),
        ChunkKey(0, RECURRENT, 2, 3),
        ChunkKey(0, RECURRENT, 3, 4),
    ]  # one 16 KiB head per chunk
    conv0 = [k for k in plan if k.layer == 0 and k.kind == CONV]
    assert conv0 == [ChunkKey(0, CONV, 0, 768)]  # 768 channels x 3 x 4 B = 9 KiB fits
    assert plan == plan_chunks(s, 16, 60, limit, 32)  # both ends derive the same plan
    with pytest.raises(WireError):
        plan_chunks(s, 60, 60, limit, 32)


def test_chunk_tokens_divide_the_prefill_chunk() -> None:
    s = spec()  # 320 B per full-attention row, block 16
    assert pick_chunk_tokens(s, 1 << 20, 2048) == 2048
    assert pick_chunk_tokens(s, 64 * 320, 2048) == 64
    assert pick_chunk_tokens(s, 100 * 320, 96) == 96
    assert pick_chunk_tokens(s, 40 * 320, 96) == 32
    assert pick_chunk_tokens(s, 1, 96) == 16  # never below one block


def test_chunk_and_manifest_round_trip() -> None:
    t = torch.randn(3, 80)
    chunk = KvChunk("r", 2, 5, ChunkKey(3, FULL_KV, 0, 3), t)
    back = KvChunk.decode(chunk.to_bytes())
    assert (back.request_id, back.epoch, back.seq, back.key) == ("r", 2, 5, chunk.key)
    assert torch.equal(back.tensor, t)
    m = KvManifest("fp", "r", 1, 16, 60, 4096, 32, 12)
    assert KvManifest.decode(m.encode()) == m
    with pytest.raises(WireError, match="bad magic"):
        KvChunk.decode(b"junk" * 4)
    with pytest.raises(WireError, match="malformed"):
        KvManifest.decode(b"PKVM{not json")


def test_fingerprint_changes_with_block_size_and_dtype() -> None:
    cfg = tiny_config()
    a = HybridSpec.from_config(cfg, 16).fingerprint()
    assert a != HybridSpec.from_config(cfg, 32).fingerprint()
    assert a != HybridSpec.from_config(cfg, 16, torch.bfloat16).fingerprint()


def test_full_attention_chunks_leave_while_prefill_continues() -> None:
    """Layer-wise pipelining: after the first prefill chunk, KV rows [0, 32) are already out."""
    engine = Engine(load_checkpoint(ensure_tiny()), EngineConfig(block_size=16, max_prefill_tokens=32))
    sent: list[KvChunk] = []
    rid = engine.add_request(
        list(range(100)), SamplingParams(max_new_tokens=2), export=ExportRequest(sent.append, 0, 0, 1 << 20)
    )
    manifest = engine.manifest(rid)
    engine.step()  # tokens [0, 32)
    assert {c.key.kind for c in sent} == {FULL_KV}
    assert sorted((c.key.layer, c.key.row_end) for c in sent) == [(3, 32), (7, 32)]
    while engine.has_work:
        engine.step()
    assert len(sent) == manifest.num_chunks == len(manifest.plan(engine.spec))
    assert len({c.seq for c in sent}) == len(sent)
