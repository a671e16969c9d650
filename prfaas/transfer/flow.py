"""Credit-based flow control for KV transfers.

The receiver grants bytes; the sender may only put a chunk on the wire when the granted credit
covers it, so at most `window` bytes are ever in flight and a slow link or a slow receiver
back-pressures the sender instead of filling buffers. The receiver returns credit as it applies
chunks. One exception avoids deadlock: a chunk larger than the whole window may go when nothing
else is in flight.
"""

from __future__ import annotations

import asyncio
import time


class CreditWindow:
    def __init__(self) -> None:
        self.granted = 0  # bytes the receiver allows beyond those consumed
        self.in_flight = 0
        self.stalled_s = 0.0
        self.error: BaseException | None = None
        self._changed = asyncio.Condition()

    async def fail(self, error: BaseException) -> None:
        """Wake a waiting sender with `error` (the receiver went away)."""
        async with self._changed:
            self.error = error
            self._changed.notify_all()

    async def grant(self, num_bytes: int) -> None:
        async with self._changed:
            self.granted += num_bytes
            self.in_flight = max(0, self.in_flight - num_bytes)
            self._changed.notify_all()

    async def drained(self) -> None:
        """Wait until every byte sent has been credited back (applied by the receiver)."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.error is not None or self.in_flight == 0)
            if self.in_flight > 0 and self.error is not None:
                raise self.error

    async def acquire(self, num_bytes: int) -> None:
        """Wait until `num_bytes` may be sent, then count them as in flight."""
        async with self._changed:
            start = time.perf_counter()
            await self._changed.wait_for(
                lambda: self.error is not None or self.granted >= num_bytes or self.in_flight == 0
            )
            self.stalled_s += time.perf_counter() - start
            if self.error is not None:
                raise self.error
            self.granted -= num_bytes
            self.in_flight += num_bytes
