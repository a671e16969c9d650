"""Engine behaviour on the embedded tiny model: batching, prefix reuse, export/import, bad input."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
import torch

from prfaas.engine.engine import Engine, EngineConfig, ExportRequest, InvalidRequest
from prfaas.engine.sampling import SamplingParams
from prfaas.kv.wire import KvChunk, KvManifest, WireError
from prfaas.model.checkpoint import load_checkpoint
from prfaas.model.kimi_linear import KimiLinearModel
from prfaas.model.tiny import ensure_tiny

GREEDY = SamplingParams(max_new_tokens=8, ignore_eos=True)


@pytest.fixture(scope="module")
def model() -> KimiLinearModel:
    return load_checkpoint(ensure_tiny())


def make_engine(model: KimiLinearModel, **kw: int) -> Engine:
    cfg = dict(block_size=16, num_blocks=256, max_seqs=8, max_prefill_tokens=32)
    cfg.update(kw)
    return Engine(model, EngineConfig(**cfg))  # type: ignore[arg-type]


def prompt(n: int, seed: int) -> list[int]:
    return torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def test_batched_decode_equals_each_alone(model: KimiLinearModel) -> None:
    prompts = [prompt(n, i) for i, n in enumerate([5, 16, 33, 70])]
    alone = [make_engine(model).generate([p], GREEDY)[0].token_ids for p in prompts]
    together = make_engine(model).generate(prompts, GREEDY)
    assert [r.token_ids for r in together] == alone


def test_prefix_reuse_gives_same_tokens(model: KimiLinearModel) -> None:
    engine = make_engine(model)
    p = prompt(70, 1)
    params = SamplingParams(max_new_tokens=12, ignore_eos=True)  # 70 + 11 computed tokens cross 80
    first = engine.generate([p], params)[0]
    second = engine.generate([p], params)[0]
    assert first.cached_tokens == 0
    assert second.cached_tokens == 64  # block-aligned, at most len - 1
    assert second.token_ids == first.token_ids
    longer = engine.generate([[*p, *first.token_ids, 7, 8, 9]], params)[0]
    assert longer.cached_tokens == 64 + 16  # generated tokens were snapshotted at their block boundary


def test_sampling_is_reproducible_and_seeded(model: KimiLinearModel) -> None:
    params = SamplingParams(max_new_tokens=12, temperature=1.0, top_p=0.9, seed=3, ignore_eos=True)
    a = make_engine(model).generate([prompt(20, 2)], params)[0].token_ids
    b = make_engine(model).generate([prompt(20, 2)], params)[0].token_ids
    c = make_engine(model).generate([prompt(20, 2)], SamplingParams(**{**_fields(params), "seed": 4}))[0]
    assert a == b
    assert c.token_ids != a


def _fields(p: SamplingParams) -> dict[str, object]:
    return {f: getattr(p, f) for f in p.__slots__}  # type: ignore[attr-defined]


def disaggregated(
    sender: Engine, receiver: Engine, ids: list[int], params: SamplingParams, shuffle: bool = True
) -> tuple[list[int], int]:
    """Prefill on `sender`, ship chunks as bytes (shuffled), import and decode on `receiver`."""
    start = receiver.match_prefix(ids).num_tokens
    wire: list[bytes] = []
    rid = sender.add_request(ids, params, export=ExportRequest(lambda c: wire.append(c.to_bytes()), start, 0, 2048))
    seq_manifest = KvManifest.decode(sender.manifest(rid).encode())
    first = None
    while sender.has_work:
        for ev in sender.step():
            first = ev.token_id
    assert len(wire) == seq_manifest.num_chunks
    receiver.begin_import(seq_manifest, ids, params)
    if shuffle:
        random.Random(len(ids)).shuffle(wire)
    for blob in wire:
        receiver.apply_chunk(KvChunk.decode(blob))
    assert first is not None
    tokens = [receiver.finish_import(rid, first).token_id]
    while receiver.has_work:
        tokens += [ev.token_id for ev in receiver.step() if ev.request_id == rid]
    return tokens, start


@pytest.mark.parametrize("length", [31, 32, 48, 57, 100])
def test_export_import_equals_monolithic(model: KimiLinearModel, length: int) -> None:
    ids = prompt(length, length)
    mono = make_engine(model).generate([ids], GREEDY)[0].token_ids
    tokens, start = disaggregated(make_engine(model), make_engine(model), ids, GREEDY)
    assert start == 0
    assert tokens == mono


@pytest.mark.parametrize("length", [40, 64, 90])
def test_export_import_with_prefix_hit_on_receiver(model: KimiLinearModel, length: int) -> None:
    ids = prompt(length, 100 + length)
    receiver = make_engine(model)
    receiver.generate([[*ids[:33], 1, 2, 3]], GREEDY)  # receiver now caches the first 32 tokens
    mono = make_engine(model).generate([ids], GREEDY)[0].token_ids
    tokens, start = disaggregated(make_engine(model), receiver, ids, GREEDY)
    assert start == 32
    assert tokens == mono


def test_seeded_sampling_survives_disaggregation(model: KimiLinearModel) -> None:
    params = SamplingParams(max_new_tokens=10, temperature=0.8, seed=11, ignore_eos=True)
    ids = prompt(45, 9)
    mono = make_engine(model).generate([ids], params)[0].token_ids
    assert disaggregated(make_engine(model), make_engine(model), ids, params)[0] == mono


@pytest.mark.parametrize("k", [1, 5, 9])
def test_seeded_sampling_continues_identically_from_prompt_plus_tokens_so_far(model: KimiLinearModel, k: int) -> None:
    """A decode failover restarts a request elsewhere as prompt + the k tokens the client has, asking for
    the rest: with the same seed it must produce the tokens the lost worker would have."""
    params = SamplingParams(max_new_tokens=12, temperature=1.0, seed=5, ignore_eos=True)
    ids = prompt(30, 4)
    whole = make_engine(model).generate([ids], params)[0].token_ids
    rest = SamplingParams(**{**_fields(params), "max_new_tokens": 12 - k})
    assert make_engine(model).generate([[*ids, *whole[:k]]], rest)[0].token_ids == whole[k:]
    assert len(set(whole)) > 3  # really sampled, not one repeated token


def _export(model: KimiLinearModel, ids: list[int]) -> tuple[KvManifest, list[KvChunk], int]:
    sender = make_engine(model)
    chunks: list[KvChunk] = []
    sender.add_request(ids, GREEDY, "r1", export=ExportRequest(chunks.append, 0, 0, 2048))
    manifest = sender.manifest("r1")
    first = [ev.token_id for ev in sender.step() + sender.step()][-1]
    return manifest, chunks, first


def test_import_rejects_incomplete_duplicate_and_foreign_state(model: KimiLinearModel) -> None:
    ids = prompt(40, 5)
    manifest, chunks, first = _export(model, ids)
    receiver = make_engine(model)
    free_before = receiver.cache.blocks.num_free
    receiver.begin_import(manifest, ids, GREEDY)
    receiver.apply_chunk(chunks[0])
    with pytest.raises(WireError, match="duplicate"):
        receiver.apply_chunk(chunks[0])
    with pytest.raises(WireError, match="incomplete"):
        receiver.finish_import("r1", first)
    assert receiver.abort("r1")
    assert receiver.cache.blocks.num_free == free_before
    with pytest.raises(WireError, match="fingerprint"):
        receiver.begin_import(replace(manifest, fingerprint="0" * 24, request_id="r2"), ids, GREEDY)
    stale = KvChunk("r1", 7, 0, chunks[0].key, chunks[0].tensor)
    receiver.begin_import(manifest, ids, GREEDY)
    with pytest.raises(WireError, match="stale"):
        receiver.apply_chunk(stale)


def test_corrupted_chunk_fails_checksum(model: KimiLinearModel) -> None:
    _, chunks, _ = _export(model, prompt(20, 6))
    blob = bytearray(chunks[0].to_bytes())
    blob[-1] ^= 0xFF
    with pytest.raises(WireError, match="checksum"):
        KvChunk.decode(bytes(blob))


def test_bad_requests_have_clear_errors(model: KimiLinearModel) -> None:
    engine = make_engine(model, num_blocks=8)
    with pytest.raises(InvalidRequest, match="empty"):
        engine.add_request([], GREEDY)
    with pytest.raises(InvalidRequest, match="outside the vocabulary"):
        engine.add_request([1, 512], GREEDY)
    with pytest.raises(InvalidRequest, match="KV blocks"):
        engine.add_request(prompt(200, 1), GREEDY)
    long_engine = Engine(model, EngineConfig(block_size=16, max_model_len=64, max_prefill_tokens=32))
    with pytest.raises(InvalidRequest, match="max_model_len"):
        long_engine.add_request(prompt(60, 1), GREEDY)
    with pytest.raises(ValueError, match="max_new_tokens"):
        SamplingParams(max_new_tokens=0)


def test_abort_frees_blocks_and_slots(model: KimiLinearModel) -> None:
    engine = make_engine(model)
    free, slots = engine.cache.blocks.num_free, engine.cache.num_free_slots
    rid = engine.add_request(prompt(50, 3), GREEDY)
    engine.step()
    assert engine.cache.blocks.num_free < free
    engine.abort(rid)
    assert (engine.cache.blocks.num_free, engine.cache.num_free_slots) == (free, slots)
    assert not engine.has_work


def test_blocks_move_between_engines_through_pool_blobs(model: KimiLinearModel) -> None:
    ids = prompt(70, 21)
    a, b = make_engine(model), make_engine(model)
    expected = a.generate([ids], GREEDY)[0].token_ids
    blocks = a.export_blocks(ids)
    assert [blk.depth for blk in blocks] == [0, 1, 2, 3]
    assert all(blk.snapshot is not None for blk in blocks)  # prefill snapshotted every boundary
    assert b.import_blocks(ids, b"", blocks) == 4
    assert b.match_prefix(ids).num_tokens == 64
    result = b.generate([ids], GREEDY)[0]
    assert result.cached_tokens == 64 and result.token_ids == expected
    with pytest.raises(WireError, match="does not belong"):
        b.import_blocks(prompt(70, 22), b"", blocks)
