"""Which backends the router currently trusts: workers and pools that failed are left out until a health
check says they are back."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from prfaas.service.grpc_server import channel
from prfaas.service.tls import TlsSettings
from prfaas.telemetry import metrics

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Watch:
    """One shared liveness probe loop of an address and the requests waiting on it."""

    gone: asyncio.Event = field(default_factory=asyncio.Event)
    waiters: int = 0
    task: asyncio.Task[None] | None = None


class Health:
    """Marks backends down on failure and re-probes them with `grpc.health.v1` until they answer SERVING.

    Rule: one failed call (unreachable, broken stream, attempt deadline) marks its backend down at once;
    the router then routes around it (prefill and decode choices, cache-pool lookups) instead of paying a
    probe timeout per request. Every `interval_s` each down backend gets one health check with a deadline
    of `interval_s`; the first SERVING answer brings it back. Backends never marked down are not probed
    here: their state streams (`watch.py`) show them alive, and a stream that breaks or falls silent marks
    its source down.
    """

    def __init__(self, interval_s: float, tls: TlsSettings | None = None, clock: Callable[[], float] = time.monotonic):
        self.interval_s = interval_s
        self.tls = tls
        self.clock = clock
        self.down: dict[str, str] = {}  # address -> why it was marked down
        self._stubs: dict[str, health_pb2_grpc.HealthStub] = {}
        self._task: asyncio.Task[None] | None = None
        self._watches: dict[tuple[str, float], _Watch] = {}  # liveness watches (`unresponsive`)

    def is_up(self, address: str) -> bool:
        return address not in self.down

    def up(self, addresses: list[str]) -> list[str]:
        return [a for a in addresses if a not in self.down]

    def mark_down(self, address: str, why: str) -> None:
        if address not in self.down:
            log.warning("%s marked unhealthy: %s", address, why)
        self.down[address] = why
        metrics.BACKEND_UP.labels(address).set(0)

    def mark_up(self, address: str) -> None:
        if self.down.pop(address, None) is not None:
            log.info("%s is healthy again", address)
        metrics.BACKEND_UP.labels(address).set(1)

    async def probe_once(self) -> None:
        """One health check of every backend marked down."""
        await asyncio.gather(*(self._probe(a) for a in list(self.down)))

    async def _probe(self, address: str) -> None:
        if await self.check(address, self.interval_s):
            self.mark_up(address)

    async def check(self, address: str, timeout_s: float) -> bool:
        """One `grpc.health.v1` check: True when `address` answers SERVING within `timeout_s`."""
        if address not in self._stubs:
            self._stubs[address] = health_pb2_grpc.HealthStub(channel(address, self.tls))
        try:
            resp = await self._stubs[address].Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
        except grpc.aio.AioRpcError:
            return False
        return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)

    async def unresponsive(self, address: str, timeout_s: float) -> None:
        """Return once `address` has answered no health check for `timeout_s`; never while it answers.

        Liveness, not speed: a worker that is slow because it is busy (a long queue, a long prefill) still
        answers health checks and keeps its work; one that is dead, hung or cut off does not, and the
        caller abandons what it waits for on it after `timeout_s`. Every request waiting on the same
        worker shares one probe loop (one health check per `interval_s`, however many requests wait)."""
        key = (address, timeout_s)
        watch = self._watches.get(key)
        if watch is None:
            watch = self._watches[key] = _Watch()
            watch.task = asyncio.create_task(self._watch(address, timeout_s, watch))
        watch.waiters += 1
        try:
            await watch.gone.wait()
        finally:
            watch.waiters -= 1
            if watch.waiters == 0 and self._watches.get(key) is watch:
                del self._watches[key]
                if watch.task is not None:
                    watch.task.cancel()

    async def _watch(self, address: str, timeout_s: float, watch: _Watch) -> None:
        last_ok = self.clock()
        while True:
            if await self.check(address, timeout_s):
                last_ok = self.clock()
            elif self.clock() - last_ok >= timeout_s:
                if self._watches.get((address, timeout_s)) is watch:
                    del self._watches[(address, timeout_s)]  # later waiters start afresh (a restarted worker)
                watch.gone.set()
                return
            await asyncio.sleep(self.interval_s)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.probe_once()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
