"""The asyncio shell around the synchronous `Engine`.

The engine runs on its own thread: forward passes never run on the event loop. Between steps the
thread executes commands submitted from the loop (admit, abort, import a chunk, ...) in order, so
the engine is only ever touched by one thread. Token events go back to the loop into per-request
queues.

Changes to the prefix cache (`on_kv`) are recorded on the engine thread and handed to the loop, in
order, after every step and every command, before that command's result: so the loop has heard of
every change a command's result reflects (e.g. `kv_state`) by the time the result arrives.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from prfaas.engine.engine import Engine
from prfaas.engine.sampling import SamplingParams
from prfaas.engine.sequence import TokenEvent
from prfaas.kv.changes import KvDelta, KvListener, KvState

log = logging.getLogger(__name__)
T = TypeVar("T")
_STOP = object()


class EngineStopped(RuntimeError):
    """The engine thread is not running (shut down, or crashed)."""


@dataclass(frozen=True, slots=True)
class EngineInfo:
    """What the services need to know of their engine; fixed for its lifetime."""

    block_size: int
    fingerprint: str  # layout fingerprint: both ends of a KV transfer must agree
    max_seqs: int  # sequences run at once (the decode batch limit)
    num_blocks: int
    max_prefill_tokens: int  # tokens per prefill step
    last_layer: int  # index of the model's last layer


class AsyncEngine:
    """The services' handle on an engine: its `info`, its free blocks, request validation, commands run
    between steps (`call`) and token streams."""

    def __init__(self, engine: Engine, name: str = "engine", threads: int | None = None) -> None:
        self._engine = engine
        self.info = EngineInfo(
            engine.spec.block_size,
            engine.spec.fingerprint(),
            engine.config.max_seqs,
            engine.config.num_blocks,
            engine.config.max_prefill_tokens,
            engine.spec.layers[-1].index,
        )
        self.name = name
        self.threads = threads
        self._commands: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._streams: dict[str, asyncio.Queue[TokenEvent]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.decode_steps: deque[tuple[int, float]] = deque(maxlen=256)  # (batch, seconds), measured
        self._kv_changes = engine.cache.track_changes()
        self._kv_listeners: list[KvListener] = []

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        if self._thread is None:
            return
        self._commands.put(_STOP)
        await asyncio.to_thread(self._thread.join)
        self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def free_blocks(self) -> int:
        """Free KV blocks (read without stopping the engine: a snapshot of a moving number)."""
        return self._engine.cache.blocks.num_free

    async def validate(self, prompt_ids: list[int], params: SamplingParams) -> None:
        """Raises `InvalidRequest` when this engine cannot serve the request as given."""
        await self.call(lambda e: e.validate(prompt_ids, params))

    # -- the prefix cache's state -------------------------------------------------------------------------
    def on_kv(self, listener: KvListener) -> None:
        """Call `listener` on the loop with every change to the prefix cache, in order."""
        self._kv_listeners.append(listener)

    async def kv_state(self) -> KvState:
        """What the prefix cache holds now: every change it reflects has reached the `on_kv` listeners."""
        return await self.call(lambda e: e.cache.held())

    # -- commands ------------------------------------------------------------------------------------
    async def call(self, fn: Callable[[Engine], T]) -> T:
        """Run `fn(engine)` on the engine thread between steps and return its result."""
        if not self.running:
            raise EngineStopped(f"{self.name} is not running" + (f": {self._error}" if self._error else ""))
        assert self._loop is not None
        future: asyncio.Future[T] = self._loop.create_future()
        self._commands.put((fn, future))
        return await future

    async def finish_import(self, request_id: str, first_token_id: int) -> None:
        """Complete an imported sequence: it joins the decode batch, and its first token (sampled by the
        sender) reaches the request's stream before any token a later step makes. (Delivered on the
        engine thread, in order with the steps' events; put on the stream from here, a decode step finishing
        before this coroutine resumed could deliver the second token first.)"""
        await self.call(lambda e: self._dispatch([e.finish_import(request_id, first_token_id)]))

    def open_stream(self, request_id: str) -> asyncio.Queue[TokenEvent]:
        """Token events of `request_id` will arrive on the returned queue (open it before starting)."""
        q: asyncio.Queue[TokenEvent] = asyncio.Queue()
        self._streams[request_id] = q
        return q

    def close_stream(self, request_id: str) -> None:
        self._streams.pop(request_id, None)

    async def events(self, request_id: str, q: asyncio.Queue[TokenEvent]) -> AsyncIterator[TokenEvent]:
        """Yield events until the request finishes; aborts it in the engine if the consumer goes away."""
        finished = False
        try:
            while not finished:
                ev = await q.get()
                finished = ev.finish_reason is not None
                yield ev
        finally:
            self.close_stream(request_id)
            if not finished and self.running:
                await self.call(lambda e: e.abort(request_id))

    # -- the engine thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            while self._drain(block=not self._engine.has_work):
                if self._engine.has_work:
                    t0 = time.perf_counter()
                    events = self._engine.step()
                    kind, batch = self._engine.last_step
                    if kind == "decode":
                        self.decode_steps.append((batch, time.perf_counter() - t0))
                    self._flush_kv()
                    self._dispatch(events)
        except BaseException as exc:  # the loop must learn that the engine died
            log.exception("%s crashed", self.name)
            self._error = exc
            self._fail_pending(exc)

    def _drain(self, block: bool) -> bool:
        """Run queued commands; False once asked to stop."""
        while True:
            try:
                item = self._commands.get(block=block)
            except queue.Empty:
                return True
            if item is _STOP:
                return False
            self._execute(*item)
            block = False

    def _execute(self, fn: Callable[[Engine], Any], future: asyncio.Future[Any]) -> None:
        assert self._loop is not None
        try:
            result = fn(self._engine)
        except Exception as exc:  # delivered to the caller, the engine keeps running
            self._flush_kv()
            self._loop.call_soon_threadsafe(_set_exception, future, exc)
        else:
            self._flush_kv()
            self._loop.call_soon_threadsafe(_set_result, future, result)

    def _flush_kv(self) -> None:
        """Hand the prefix cache's changes since the last flush to the loop (engine thread)."""
        delta = self._kv_changes.take()
        if delta is not None:
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._deliver_kv, delta)

    def _deliver_kv(self, delta: KvDelta) -> None:
        for listener in self._kv_listeners:
            listener(delta)

    def _dispatch(self, events: list[TokenEvent]) -> None:
        assert self._loop is not None
        for ev in events:
            self._loop.call_soon_threadsafe(self._deliver, ev)

    def _deliver(self, ev: TokenEvent) -> None:
        q = self._streams.get(ev.request_id)
        if q is not None:
            q.put_nowait(ev)

    def _fail_pending(self, exc: BaseException) -> None:
        while True:
            try:
                item = self._commands.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP and self._loop is not None:
                self._loop.call_soon_threadsafe(_set_exception, item[1], EngineStopped(str(exc)))


def _set_result(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
