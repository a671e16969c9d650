"""The router's subscriptions: one state stream (`Watch`) per worker and cache pool, kept open, feeding the
`SourceTable` the router decides from.

Rules: a stream that breaks, or brings nothing for `silence_s` (every source sends at least a heartbeat load
report a second, so silence means hung or cut off, not idle), marks its source down at once (the health
checks bring it back) and drops what the table knew of it; the stream is opened again every `retry_s`.
A stream whose messages skip or come from a new instance is reopened at once: its first message is a fresh
snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import grpc

from prfaas.state.table import SourceTable
from services.router.health import Health

log = logging.getLogger(__name__)
Opener = Callable[[], grpc.aio.UnaryStreamCall]  # a new `Watch` call


FIRST_MESSAGE_S = 30.0  # a snapshot of a big pool (Redis: a SCAN) may take a while


class StateWatcher:
    def __init__(self, table: SourceTable, health: Health, retry_s: float, silence_s: float = 5.0) -> None:
        self.table, self.health, self.retry_s, self.silence_s = table, health, retry_s, silence_s
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.resyncs = 0  # streams reopened because messages were lost or the source restarted

    def follow(self, source: str, open_stream: Opener) -> None:
        """Keep `source`'s state stream open until `stop`."""
        if source not in self._tasks:
            self._tasks[source] = asyncio.create_task(self._follow(source, open_stream))

    async def stop(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        for task in self._tasks.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def _follow(self, source: str, open_stream: Opener) -> None:
        while True:
            why = await self._read(source, open_stream)
            if why is None:
                self.resyncs += 1
                continue
            self.table.lost(source)
            self.health.mark_down(source, f"state stream: {why}")
            await asyncio.sleep(self.retry_s)

    async def _read(self, source: str, open_stream: Opener) -> str | None:
        """Apply the stream's messages; None when it must be reopened at once (a gap), else why it ended."""
        call = open_stream()
        events = call.__aiter__()
        limit_s = max(self.silence_s, FIRST_MESSAGE_S)
        try:
            while True:
                async with asyncio.timeout(limit_s):
                    event = await anext(events)
                if not self.table.apply(source, event):
                    log.info("state stream of %s skipped or restarted: resubscribing", source)
                    return None
                limit_s = self.silence_s
        except StopAsyncIteration:
            return "ended"
        except TimeoutError:
            return f"silent for {limit_s:g}s (its heartbeat is about a second): hung or cut off"
        except grpc.aio.AioRpcError as exc:
            return f"{exc.code().name}: {exc.details()}"
        finally:
            call.cancel()
