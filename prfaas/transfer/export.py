"""The prefill side of a KV transfer: run one prefill on the engine and stream its state, layer by layer
while later layers compute, to a receiver through `sender.send_state`.

Order of events: the sender opens the transfer and learns the receiver's prefix (`start_tokens`); only
then is the request admitted to the engine (`prepare`), with an export that starts at that prefix. The
engine thread hands each finished chunk to `_sink`, which frames it (CRC and the one copy, off the event
loop) and queues it for the sender. The first token, sampled on this side, travels in the commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

import grpc
from opentelemetry import trace

from prfaas.engine.async_engine import AsyncEngine, EngineStopped
from prfaas.engine.engine import Engine, ExportRequest
from prfaas.engine.sampling import SamplingParams
from prfaas.kv.wire import FULL_KV, KvChunk, KvManifest
from prfaas.telemetry.tracing import tracer
from prfaas.transfer.framing import frame_chunk
from prfaas.transfer.sender import DataPlaneTarget, PreparedExport, TransferError, TransferStats, send_state


@dataclass(frozen=True, slots=True)
class ExportJob:
    """One prefill to run and ship."""

    request_id: str
    epoch: int  # attempt number: the receiver rejects chunks of older attempts
    token_ids: list[int]
    params: SamplingParams
    salt: bytes  # the tenant's prefix-hash namespace


@dataclass(slots=True)
class ExportTiming:
    """When the prefill was admitted and produced its first token (perf_counter seconds), and what it reused."""

    arrival_s: float
    admitted_s: float | None = None
    first_s: float | None = None
    cached_tokens: int = 0
    last_layer_bytes: int = 0  # bytes of the last layer produced by the final prefill step

    @property
    def queue_s(self) -> float:
        return (self.admitted_s or self.arrival_s) - self.arrival_s

    def prefill_s(self, done_s: float) -> float:
        return (self.first_s or done_s) - (self.admitted_s or self.arrival_s)


@dataclass(frozen=True, slots=True)
class ExportTarget:
    """Where the state goes and how."""

    channel: grpc.aio.Channel  # to the receiver's DecodeService
    timeout_s: float
    chunk_bytes: int
    num_streams: int = 1
    data_plane: DataPlaneTarget | None = None


class PrefillExport:
    def __init__(
        self, engine: AsyncEngine, job: ExportJob, chunk_bytes: int, prefill_span: trace.Span, arrival_s: float
    ) -> None:
        self.engine, self.job, self.chunk_bytes = engine, job, chunk_bytes
        self.timing = ExportTiming(arrival_s)
        self._span = prefill_span
        self._events = engine.open_stream(job.request_id)
        self._loop = asyncio.get_running_loop()
        # What the last layer produces in the final prefill step must still travel after prefill ends.
        step = engine.info.max_prefill_tokens
        self._final_start = (len(job.token_ids) - 1) // step * step

    async def prepare(self, start_tokens: int) -> PreparedExport:
        """Admit the prefill with an export from the receiver's prefix on; chunks queue up as they are made."""
        chunks: asyncio.Queue[bytes] = asyncio.Queue()
        export = ExportRequest(lambda chunk: self._sink(chunk, chunks), start_tokens, self.job.epoch, self.chunk_bytes)
        manifest = await self.engine.call(lambda e: self._admit(e, export))
        return PreparedExport(manifest, chunks, self._first_token())

    def _admit(self, e: Engine, export: ExportRequest) -> KvManifest:  # runs on the engine thread
        job = self.job
        self.timing.admitted_s = time.perf_counter()
        self.timing.cached_tokens = e.match_prefix(job.token_ids, job.salt).num_tokens
        e.add_request(job.token_ids, job.params, job.request_id, job.salt, export)
        return e.manifest(job.request_id)

    def _sink(self, chunk: KvChunk, chunks: asyncio.Queue[bytes]) -> None:  # runs on the engine thread
        key = chunk.key
        if key.layer == self.engine.info.last_layer and (key.kind != FULL_KV or key.row_end > self._final_start):
            self.timing.last_layer_bytes += chunk.tensor.nbytes
        self._span.add_event("kv.chunk", {"layer": key.layer, "kind": key.kind, "rows": key.row_end})
        self._loop.call_soon_threadsafe(chunks.put_nowait, frame_chunk(chunk))

    async def _first_token(self) -> int:
        async for ev in self.engine.events(self.job.request_id, self._events):
            if self.timing.first_s is None:
                self.timing.first_s = time.perf_counter()
            if ev.finish_reason is not None:
                self._span.end()  # the prefill computation is over; the transfer's tail follows
                return ev.token_id
        raise TransferError("prefill ended without a token")

    def abandon(self) -> asyncio.Future[bool]:
        """Stop computing a request whose transfer failed or was cancelled: one admitted before its first
        token was awaited would otherwise run to the end for nobody, holding blocks and the engine."""
        rid = self.job.request_id
        self.engine.close_stream(rid)

        async def abort_it() -> bool:
            with contextlib.suppress(EngineStopped):
                return await self.engine.call(lambda e: e.abort(rid))
            return False

        return asyncio.ensure_future(abort_it())


async def export_state(
    engine: AsyncEngine,
    job: ExportJob,
    target: ExportTarget,
    arrival_s: float,
    abandoned: set[asyncio.Future[bool]],
) -> tuple[TransferStats, ExportTiming]:
    """Prefill `job` and stream its state to `target`, traced as `kv.transfer` with a `prefill` child span.
    `arrival_s` (perf_counter) is when the request reached the worker. On failure the request is aborted in
    the engine (its abort task is kept in `abandoned`)."""
    with tracer().start_as_current_span("kv.transfer") as span:
        prefill_span = tracer().start_span("prefill", attributes={"prfaas.prompt_tokens": len(job.token_ids)})
        export = PrefillExport(engine, job, target.chunk_bytes, prefill_span, arrival_s)
        try:
            stats = await send_state(
                target.channel,
                job.request_id,
                job.epoch,
                engine.info.fingerprint,
                export.prepare,
                target.timeout_s,
                target.num_streams,
                target.data_plane,
            )
        except BaseException:
            task = export.abandon()
            abandoned.add(task)
            task.add_done_callback(abandoned.discard)
            raise
        finally:
            if prefill_span.is_recording():
                prefill_span.end()
        span.set_attributes(_transfer_attributes(stats, export.timing))
    return stats, export.timing


def _transfer_attributes(stats: TransferStats, timing: ExportTiming) -> dict[str, str | int | float]:
    return {
        "kv.bytes": stats.kv_bytes,
        "kv.chunks": stats.num_chunks,
        "kv.streams": stats.num_streams,
        "kv.transport": stats.transport,
        "kv.duration_s": stats.transfer_s,
        "kv.gbps": stats.kv_bytes * 8 / max(stats.transfer_s, 1e-9) / 1e9,
        "kv.stalled_s": stats.stalled_s,
        "kv.receiver_cached_tokens": stats.receiver_cached_tokens,
        "prfaas.cached_tokens": timing.cached_tokens,
    }
