"""The batching engine: admission with prefix reuse, chunked prefill, continuous-batching decode, and
state export/import for disaggregated serving.

`step()` = schedule -> run -> postprocess. Each step runs either one prefill chunk of the oldest
prefilling sequence or one decode step for every decoding sequence; when both kinds of work exist
they alternate, so long prompts never stall running decodes for more than one chunk.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from prfaas.engine.sampling import SamplingParams, sample, sample_batch
from prfaas.engine.sequence import Sequence, Status, TokenEvent
from prfaas.engine.validation import InvalidRequest, check_prompt
from prfaas.kv.cache import HybridCache
from prfaas.kv.migration import ChunkSink, StateExporter, StateImporter
from prfaas.kv.pool_blocks import decode_block, decode_snapshot, encode_block, encode_snapshot
from prfaas.kv.prefix import DEFAULT_BLOCK_SIZE, PrefixMatch, block_hashes, longest_hybrid_prefix
from prfaas.kv.spec import HybridSpec
from prfaas.kv.wire import DEFAULT_CHUNK_BYTES, KvChunk, KvManifest, WireError, pick_chunk_tokens
from prfaas.model.checkpoint import load_checkpoint
from prfaas.model.kimi_linear import DecodeInput, PrefillInput
from prfaas.model.runner import ModelRunner
from prfaas.model.tiny import resolve_model


class EngineFull(InvalidRequest):
    """No free blocks or slot for an imported sequence right now: it fits once running sequences finish."""


@dataclass(frozen=True, slots=True)
class EngineConfig:
    block_size: int = DEFAULT_BLOCK_SIZE
    num_blocks: int = 1024
    max_seqs: int = 32
    max_prefill_tokens: int = 2048  # tokens per prefill step (chunked prefill)
    snapshot_bytes: int = 256 << 20
    snapshot_every_blocks: int = 1
    max_model_len: int | None = None
    dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
        if self.max_prefill_tokens % self.block_size:
            raise ValueError("max_prefill_tokens must be a multiple of block_size")
        if self.snapshot_every_blocks < 1:
            raise ValueError("snapshot_every_blocks must be >= 1")


@dataclass(frozen=True, slots=True)
class ExportRequest:
    """Ask a prefill to stream its state: rows from `start_tokens` (the receiver's prefix) onwards."""

    sink: ChunkSink
    start_tokens: int = 0
    epoch: int = 0
    chunk_bytes: int = DEFAULT_CHUNK_BYTES


@dataclass(frozen=True, slots=True)
class PoolBlock:
    """One block as the cluster cache pool stores it."""

    block_hash: bytes
    depth: int
    kv: bytes
    snapshot: bytes | None


@dataclass(frozen=True, slots=True)
class GenerationResult:
    request_id: str
    prompt_ids: list[int]
    token_ids: list[int]
    finish_reason: str | None
    cached_tokens: int


class Engine:
    def __init__(self, model: ModelRunner, config: EngineConfig | None = None) -> None:
        self.model = model
        self.config = config or EngineConfig()
        cfg = self.config
        self.spec = HybridSpec.from_config(model.config, cfg.block_size, cfg.dtype)
        self.cache = HybridCache(self.spec, cfg.num_blocks, cfg.max_seqs, cfg.snapshot_bytes)
        self.max_model_len = cfg.max_model_len or model.config.max_position_embeddings
        self.waiting: deque[Sequence] = deque()
        self.prefilling: deque[Sequence] = deque()
        self.decoding: list[Sequence] = []
        self.importing: dict[str, Sequence] = {}
        self._by_id: dict[str, Sequence] = {}
        self._ids = itertools.count()
        self._last_was_prefill = False
        self.last_step: tuple[str, int] = ("idle", 0)  # kind and batch size of the latest step

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, config: EngineConfig | None = None) -> Engine:
        dtype = (config or EngineConfig()).dtype
        return cls(load_checkpoint(resolve_model(str(name_or_path)), dtype), config)

    # -- requests ------------------------------------------------------------------------------------
    def validate(self, prompt_ids: list[int], params: SamplingParams) -> None:
        check_prompt(prompt_ids, params.max_new_tokens, self.model.config.vocab_size, self.max_model_len)
        total = len(prompt_ids) + params.max_new_tokens
        if self._blocks_for(total) > self.config.num_blocks:
            raise InvalidRequest(
                f"request needs {self._blocks_for(total)} KV blocks, the engine has {self.config.num_blocks}"
            )

    def add_request(
        self,
        prompt_ids: list[int],
        params: SamplingParams | None = None,
        request_id: str | None = None,
        salt: bytes = b"",
        export: ExportRequest | None = None,
    ) -> str:
        """Queue a request. With `export`, the engine only prefills and streams the state out."""
        params = params or SamplingParams()
        self.validate(prompt_ids, params)
        rid = request_id or f"req-{next(self._ids)}"
        if rid in self._by_id:
            raise InvalidRequest(f"request id {rid!r} is already in use")
        seq = Sequence(rid, list(prompt_ids), params, salt, prefill_only=export is not None)
        if export is not None:
            self._attach_exporter(seq, export)
        self._by_id[rid] = seq
        self.waiting.append(seq)
        return rid

    def abort(self, request_id: str) -> bool:
        seq = self._by_id.get(request_id)
        if seq is None:
            return False
        self._finish(seq, "aborted")
        return True

    def get(self, request_id: str) -> Sequence | None:
        return self._by_id.get(request_id)

    def manifest(self, request_id: str) -> KvManifest:
        """The transfer manifest of an exporting request (send it before the chunks)."""
        seq = self._by_id.get(request_id)
        if seq is None or seq.exporter is None:
            raise KeyError(f"request {request_id!r} is not exporting")
        return seq.exporter.manifest

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.prefilling or self.decoding)

    def match_prefix(self, prompt_ids: list[int], salt: bytes = b"") -> PrefixMatch:
        """The hybrid prefix this engine could resume a prompt from (full blocks + a linear snapshot)."""
        hashes = block_hashes(prompt_ids, self.spec.block_size, salt)
        return self._match(hashes, len(prompt_ids))

    def match_transfer_prefix(self, prompt_ids: list[int], salt: bytes = b"") -> PrefixMatch:
        """The prefix an import can start from: only full-attention blocks are needed, because a
        transfer always carries the final linear state."""
        hashes = block_hashes(prompt_ids, self.spec.block_size, salt)
        return longest_hybrid_prefix(
            hashes,
            len(prompt_ids),
            self.spec.block_size,
            lambda h: self.cache.blocks.lookup(h) is not None,
            lambda h: True,
        )

    # -- the cluster cache pool ------------------------------------------------------------------------
    def export_blocks(self, prompt_ids: list[int], salt: bytes = b"", skip_blocks: int = 0) -> list[PoolBlock]:
        """The cached full blocks of a prompt (and snapshots at their ends), encoded for the pool."""
        out = []
        for depth, h in enumerate(block_hashes(prompt_ids, self.spec.block_size, salt)):
            block = self.cache.blocks.lookup(h)
            if block is None:
                break
            if depth < skip_blocks:
                continue
            kv = torch.stack([full[block] for full in self.cache.full]) if self.cache.full else torch.empty(0)
            snap = None if self.cache.snapshots.always_hit else self.cache.snapshots.get(h)
            encoded = None if snap is None else encode_snapshot(self.spec, snap)
            out.append(PoolBlock(h, depth, encode_block(self.spec, kv), encoded))
        return out

    def import_blocks(self, prompt_ids: list[int], salt: bytes, blocks: list[PoolBlock]) -> int:
        """Install blocks fetched from the pool into the local prefix cache; returns blocks installed."""
        hashes = block_hashes(prompt_ids, self.spec.block_size, salt)
        installed = 0
        for b in blocks:
            if b.depth >= len(hashes) or hashes[b.depth] != b.block_hash:
                raise WireError(f"pool block at depth {b.depth} does not belong to this prompt")
            if self.cache.blocks.lookup(b.block_hash) is None:
                kv = decode_block(self.spec, b.kv)
                [block] = self.cache.blocks.allocate(1)
                for layer, full in enumerate(self.cache.full):
                    full[block].copy_(kv[layer])
                self.cache.blocks.register(block, b.block_hash)
                self.cache.blocks.free([block])  # cached, evictable, reusable by the next request
                installed += 1
            if b.snapshot is not None:
                self.cache.snapshots.put(b.block_hash, decode_snapshot(self.spec, b.snapshot))
        return installed

    # -- the loop ------------------------------------------------------------------------------------
    def step(self) -> list[TokenEvent]:
        self._admit()
        run_prefill = bool(self.prefilling) and (not self.decoding or not self._last_was_prefill)
        self._last_was_prefill = run_prefill
        if run_prefill:
            self.last_step = ("prefill", 1)
            return self._prefill_step(self.prefilling[0])
        if self.decoding:
            batch = self.decoding[: self.config.max_seqs]
            self.last_step = ("decode", len(batch))
            return self._decode_step(batch)
        self.last_step = ("idle", 0)
        return []

    def generate(
        self, prompts: Iterable[list[int]], params: SamplingParams | None = None, salt: bytes = b""
    ) -> list[GenerationResult]:
        """Run prompts to completion (batched) and return their outputs in order."""
        rids = [self.add_request(p, params, salt=salt) for p in prompts]
        seqs = [self._by_id[r] for r in rids]
        while self.has_work:
            self.step()
        return [
            GenerationResult(s.request_id, s.prompt_ids, s.output_ids, s.finish_reason, s.cached_tokens) for s in seqs
        ]

    # -- admission -----------------------------------------------------------------------------------
    def _blocks_for(self, tokens: int) -> int:
        return math.ceil(tokens / self.spec.block_size)

    def _match(self, hashes: list[bytes], prompt_len: int) -> PrefixMatch:
        return longest_hybrid_prefix(
            hashes,
            prompt_len,
            self.spec.block_size,
            lambda h: self.cache.blocks.lookup(h) is not None,
            lambda h: h in self.cache.snapshots,
        )

    def _admit(self) -> None:
        while self.waiting and self.cache.num_free_slots:
            if not self._try_admit(self.waiting[0]):
                return
            self.prefilling.append(self.waiting.popleft())

    def _try_admit(self, seq: Sequence) -> bool:
        """Reserve blocks for the whole request (prompt + max_new_tokens) after reusing its prefix."""
        hashes = block_hashes(seq.prompt_ids, self.spec.block_size, seq.salt)
        hit = self._match(hashes, len(seq.prompt_ids))
        prefix = [self.cache.blocks.lookup(h) for h in hashes[: hit.num_blocks]]
        for block in prefix:
            self.cache.blocks.acquire(block)  # type: ignore[arg-type]
        need = self._blocks_for(len(seq.prompt_ids) + seq.params.max_new_tokens) - hit.num_blocks
        if need > self.cache.blocks.num_free:
            self.cache.blocks.free(reversed(prefix))  # type: ignore[arg-type]
            return False
        seq.blocks = [*prefix, *self.cache.blocks.allocate(need)]  # type: ignore[list-item]
        seq.slot = self.cache.take_slot()
        if hit.num_blocks:
            snap = self.cache.snapshots.get(hashes[hit.num_blocks - 1])
            if snap is not None:
                self.cache.restore(seq.slot, snap)
        seq.hashes = hashes[: hit.num_blocks]
        seq.num_computed = seq.cached_tokens = hit.num_tokens
        seq.status = Status.PREFILLING
        return True

    def _attach_exporter(self, seq: Sequence, export: ExportRequest) -> None:
        if not 0 <= export.start_tokens < len(seq.prompt_ids):
            raise InvalidRequest(f"export start {export.start_tokens} must be in [0, {len(seq.prompt_ids)})")
        chunk_tokens = pick_chunk_tokens(self.spec, export.chunk_bytes, self.config.max_prefill_tokens)
        manifest = KvManifest(
            self.spec.fingerprint(),
            seq.request_id,
            export.epoch,
            export.start_tokens,
            len(seq.prompt_ids),
            export.chunk_bytes,
            chunk_tokens,
            0,
        )
        manifest = replace(manifest, num_chunks=len(manifest.plan(self.spec)))
        seq.exporter = StateExporter(self.cache, manifest, export.sink)

    # -- prefill -------------------------------------------------------------------------------------
    def _prefill_step(self, seq: Sequence) -> list[TokenEvent]:
        assert seq.slot is not None
        start, step = seq.num_computed, self.config.max_prefill_tokens
        end = min(len(seq.prompt_ids), (start // step + 1) * step)  # chunk ends are multiples of `step`
        table = seq.block_table(self._blocks_for(end))
        exporter, slot = seq.exporter, seq.slot
        every = self.config.snapshot_every_blocks * self.spec.block_size
        inp = PrefillInput(torch.tensor(seq.prompt_ids[start:end]), start, table, seq.slot, every)
        hook = None if exporter is None else (lambda layer: exporter.on_layer(layer, end, table, slot))
        out = self.model.prefill(self.cache, inp, hook)
        seq.num_computed = end
        self._publish_blocks(seq, end)
        for tokens, snap in out.snapshots:
            self.cache.snapshots.put(seq.hashes[tokens // self.spec.block_size - 1], snap)
        if end < len(seq.prompt_ids):
            return []
        self.prefilling.popleft()
        token = sample(out.last_logits, seq.params, len(seq.prompt_ids))
        if seq.prefill_only:
            seq.output_ids.append(token)
            self._finish(seq, "prefill_done")
            return [TokenEvent(seq.request_id, token, 0, "prefill_done")]
        seq.status = Status.DECODING
        self.decoding.append(seq)
        return [self._append(seq, token)]

    def _publish_blocks(self, seq: Sequence, upto_tokens: int) -> None:
        """Hash and publish every newly full block so later requests can reuse it."""
        full = upto_tokens // self.spec.block_size
        if full <= len(seq.hashes):
            return
        seq.hashes = block_hashes(seq.all_ids[: full * self.spec.block_size], self.spec.block_size, seq.salt)
        for block, h in zip(seq.blocks[:full], seq.hashes, strict=True):
            self.cache.blocks.register(block, h)

    # -- decode --------------------------------------------------------------------------------------
    def _decode_step(self, batch: list[Sequence]) -> list[TokenEvent]:
        positions = [s.num_tokens - 1 for s in batch]
        width = max(self._blocks_for(p + 1) for p in positions)
        tables = torch.zeros(len(batch), width, dtype=torch.long)
        for i, s in enumerate(batch):
            row = s.blocks[:width]
            tables[i, : len(row)] = torch.tensor(row)
        inp = DecodeInput(
            torch.tensor([s.output_ids[-1] for s in batch]),
            torch.tensor(positions),
            tables,
            torch.tensor([s.slot for s in batch]),
        )
        logits = self.model.decode(self.cache, inp)
        for s, p in zip(batch, positions, strict=True):
            s.num_computed = p + 1
            self._on_token_computed(s)
        tokens = sample_batch(logits, [s.params for s in batch], [s.num_tokens for s in batch])
        return [self._append(s, t) for s, t in zip(batch, tokens, strict=True)]

    def _on_token_computed(self, seq: Sequence) -> None:
        """At a block boundary, publish the block and snapshot the linear state."""
        bs = self.spec.block_size
        if seq.num_computed % bs:
            return
        self._publish_blocks(seq, seq.num_computed)
        if (seq.num_computed // bs) % self.config.snapshot_every_blocks == 0 and seq.slot is not None:
            self.cache.snapshots.put(seq.hashes[-1], self.cache.snapshot(seq.slot))

    def _append(self, seq: Sequence, token: int) -> TokenEvent:
        seq.output_ids.append(token)
        reason = self._stop_reason(seq, token)
        if reason is not None:
            self._finish(seq, reason)
        return TokenEvent(seq.request_id, token, len(seq.output_ids) - 1, reason)

    def _stop_reason(self, seq: Sequence, token: int) -> str | None:
        p = seq.params
        eos = () if p.ignore_eos else self.model.config.eos_token_ids
        if token in p.stop_token_ids or token in eos:
            return "stop"
        if len(seq.output_ids) >= p.max_new_tokens or seq.num_tokens >= self.max_model_len:
            return "length"
        return None

    def _finish(self, seq: Sequence, reason: str) -> None:
        if seq.status == Status.FINISHED:
            return
        for queue in (self.waiting, self.prefilling):
            if seq in queue:
                queue.remove(seq)
        if seq in self.decoding:
            self.decoding.remove(seq)
        self.importing.pop(seq.request_id, None)
        self._release(seq)
        seq.status, seq.finish_reason = Status.FINISHED, reason
        self._by_id.pop(seq.request_id, None)

    def _release(self, seq: Sequence) -> None:
        self.cache.blocks.free(reversed(seq.blocks))
        seq.blocks = []
        if seq.slot is not None:
            self.cache.release_slot(seq.slot)
            seq.slot = None

    # -- import (the decode side of a disaggregated request) -----------------------------------------
    def begin_import(
        self, manifest: KvManifest, prompt_ids: list[int], params: SamplingParams, salt: bytes = b""
    ) -> None:
        """Reserve blocks and a slot for a sequence whose state will arrive as chunks."""
        self.validate(prompt_ids, params)
        if len(prompt_ids) != manifest.num_tokens:
            raise WireError(f"manifest covers {manifest.num_tokens} tokens, prompt has {len(prompt_ids)}")
        if manifest.request_id in self._by_id:
            raise InvalidRequest(f"request id {manifest.request_id!r} is already in use")
        hashes = block_hashes(prompt_ids, self.spec.block_size, salt)
        keep = manifest.start_tokens // self.spec.block_size
        if manifest.start_tokens % self.spec.block_size:
            raise WireError(f"transfer start {manifest.start_tokens} is not block-aligned")
        prefix = [self.cache.blocks.lookup(h) for h in hashes[:keep]]
        if any(b is None for b in prefix):
            raise WireError(f"receiver no longer holds the {manifest.start_tokens}-token prefix; resend from 0")
        seq = Sequence(manifest.request_id, list(prompt_ids), params, salt)
        need = self._blocks_for(len(prompt_ids) + params.max_new_tokens) - keep
        if need > self.cache.blocks.num_free or not self.cache.num_free_slots:
            raise EngineFull("engine is full: no blocks or slots for the imported sequence; retry later")
        for block in prefix:
            self.cache.blocks.acquire(block)  # type: ignore[arg-type]
        seq.blocks = [*prefix, *self.cache.blocks.allocate(need)]  # type: ignore[list-item]
        seq.slot = self.cache.take_slot()
        seq.hashes, seq.cached_tokens, seq.status = hashes[:keep], manifest.start_tokens, Status.IMPORTING
        seq.importer = StateImporter(self.cache, manifest, seq.block_table(), seq.slot)
        self.importing[seq.request_id] = seq
        self._by_id[seq.request_id] = seq

    def apply_chunk(self, chunk: KvChunk) -> None:
        seq = self.importing.get(chunk.request_id)
        if seq is None or seq.importer is None:
            raise WireError(f"no transfer in progress for request {chunk.request_id!r}")
        seq.importer.apply(chunk)

    def finish_import(self, request_id: str, first_token_id: int) -> TokenEvent:
        """Start decoding an imported sequence from the prefill side's first token."""
        seq = self.importing.get(request_id)
        if seq is None or seq.importer is None:
            raise WireError(f"no transfer in progress for request {request_id!r}")
        if not seq.importer.complete:
            raise WireError(f"state of {request_id} incomplete: {seq.importer.missing} chunks missing")
        del self.importing[request_id]
        seq.importer = None
        seq.num_computed = len(seq.prompt_ids)
        self._publish_blocks(seq, seq.num_computed)
        if seq.num_computed % self.spec.block_size == 0 and seq.slot is not None:
            self.cache.snapshots.put(seq.hashes[-1], self.cache.snapshot(seq.slot))
        seq.status = Status.DECODING
        self.decoding.append(seq)
        return self._append(seq, first_token_id)
