"""Prefill/decode roles of the local PD workers, and converting workers between them.

Dual-role PD workers (`services.pd`) serve both roles on one engine; the router decides which role
each one plays. To restore Eqs. (7)-(8) after a re-plan, a worker is converted in two steps: it
drains (no new work of its old role, in-flight work finishes), then it switches.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

from prfaas.sched.policy import Split
from prfaas.telemetry.metrics import ROLE_SWITCHES

log = logging.getLogger(__name__)
PREFILL_ROLE, DECODE_ROLE, DRAINING = "prefill", "decode", "draining"
Probe = Callable[[str], Awaitable[int]]  # in-flight work of the old role on a worker


class RoleTable:
    def __init__(self, prefill: Sequence[str], decode: Sequence[str], dual: Sequence[str], dual_prefill: int) -> None:
        if not 0 <= dual_prefill <= len(dual):
            raise ValueError(f"pd_prefill_workers must be in 0..{len(dual)}")
        self.fixed = {**dict.fromkeys(prefill, PREFILL_ROLE), **dict.fromkeys(decode, DECODE_ROLE)}
        self.dual = {a: PREFILL_ROLE if i < dual_prefill else DECODE_ROLE for i, a in enumerate(dual)}
        self.switches = 0

    def members(self, role: str) -> list[str]:
        return [a for a, r in (*self.fixed.items(), *self.dual.items()) if r == role]

    def split(self) -> Split:
        return Split(len(self.members(PREFILL_ROLE)), len(self.members(DECODE_ROLE)))

    async def rebalance(self, target: Split, probes: Mapping[str, Probe], drain_timeout_s: float) -> int:
        """Convert dual-role workers until the split matches `target` as far as they allow."""
        delta = target.n_prefill - self.split().n_prefill
        old, new = (DECODE_ROLE, PREFILL_ROLE) if delta > 0 else (PREFILL_ROLE, DECODE_ROLE)
        candidates = [a for a, r in self.dual.items() if r == old][: abs(delta)]
        if len(self.members(old)) - len(candidates) < 1:
            candidates = candidates[:-1]  # never leave a role empty
        await asyncio.gather(*(self._convert(a, old, new, probes[old], drain_timeout_s) for a in candidates))
        return len(candidates)

    async def _convert(self, address: str, old: str, new: str, probe: Probe, drain_timeout_s: float) -> None:
        self.dual[address] = DRAINING
        deadline = time.monotonic() + drain_timeout_s
        while time.monotonic() < deadline:
            try:
                if await probe(address) == 0:
                    break
            except Exception:  # an unreachable worker has nothing left to drain
                break
            await asyncio.sleep(0.05)
        else:
            log.warning("%s did not drain its %s work in %.0fs; switching anyway", address, old, drain_timeout_s)
        self.dual[address] = new
        self.switches += 1
        ROLE_SWITCHES.inc()
        log.info("%s switched from %s to %s", address, old, new)
