"""Interleaving async iterators: a transfer stream's replies come from its gRPC messages and its data
connection at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, TypeVar

T = TypeVar("T")
_ITEM, _END, _ERROR = range(3)


async def merge(*sources: AsyncIterator[T]) -> AsyncIterator[T]:
    """Items of all `sources` as they come. Ends once every source has ended; the first error is raised
    and the other sources are cancelled (so are all of them when the consumer stops early)."""
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()

    async def pump(source: AsyncIterator[T]) -> None:
        try:
            async for item in source:
                queue.put_nowait((_ITEM, item))
        except Exception as exc:
            queue.put_nowait((_ERROR, exc))
        else:
            queue.put_nowait((_END, None))

    tasks = [asyncio.create_task(pump(s)) for s in sources]
    try:
        running = len(tasks)
        while running:
            kind, value = await queue.get()
            if kind == _ERROR:
                raise value
            if kind == _END:
                running -= 1
            else:
                yield value
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
