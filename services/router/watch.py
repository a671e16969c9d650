"""The router's subscriptions: one state stream (`Watch`) per worker and cache pool, kept open, feeding the
`SourceTable` the router decides from.

Rules: a stream that breaks marks its source down at once (the health checks bring it back) and drops what
the table knew of it; the stream is opened again every `retry_s`. A stream whose messages skip or come from
a new instance is reopened at once: its first message is a fresh snapshot.
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


class StateWatcher:
    def __init__(self, table: SourceTable, health: Health, retry_s: float) -> None:
        self.table, self.health, self.retry_s = table, health, retry_s
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
        try:
            async for event in call:
                if not self.table.apply(source, event):
                    log.info("state stream of %s skipped or restarted: resubscribing", source)
                    return None
        except grpc.aio.AioRpcError as exc:
            return f"{exc.code().name}: {exc.details()}"
        finally:
            call.cancel()
        return "ended"
