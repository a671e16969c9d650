"""The router's control state: the routing policy, the measured link and queues, and the long
timescale loop that re-fits profiles and re-plans t (paper §3.4.3)."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable

from prfaas.sched.egress import EgressMeter
from prfaas.sched.fit import DecodeSample, PrefillSample, fit_profile
from prfaas.sched.policy import ClusterState, Decision, PeriodObservation, RequestView, Split, make_policy
from prfaas.sched.routing import PD, PRFAAS
from services.router.settings import RouterSettings

log = logging.getLogger(__name__)
HISTORY = 2000


class RouterControl:
    def __init__(
        self,
        settings: RouterSettings,
        n_prfaas: int,
        split: Callable[[], Split],
        rebalance: Callable[[Split], Awaitable[int]] | None = None,
    ) -> None:
        self.settings = settings
        self.policy = make_policy(settings.policy, settings.threshold_tokens)
        self.egress = EgressMeter(settings.link_gbps)
        self.n_prfaas, self._split, self._rebalance = n_prfaas, split, rebalance
        self.in_flight = {PRFAAS: 0, PD: 0}  # routed, prefill not yet acknowledged
        self.incremental: deque[float] = deque(maxlen=HISTORY)
        self.prompts: deque[float] = deque(maxlen=HISTORY)
        self.output_tokens: deque[int] = deque(maxlen=HISTORY)
        self.samples: dict[str, list[PrefillSample]] = {PRFAAS: [], PD: []}
        self.decode_samples: list[DecodeSample] = []
        self.replans = 0
        self.collect: Callable[[], None] | None = None  # refreshes the samples from the workers' reports
        self._task: asyncio.Task[None] | None = None

    @property
    def counts(self) -> tuple[int, int, int]:
        split = self._split()
        return self.n_prfaas, split.n_prefill, split.n_decode

    def state(self, prfaas_available: bool) -> ClusterState:
        n_prfaas, n_prefill, n_decode = self.counts
        return ClusterState(
            prfaas_available=prfaas_available,
            egress_utilization=self.egress.utilization(),
            link_gbps=self.egress.capacity_gbps(),  # configured, or measured while the link is the bottleneck
            prfaas_queue_depth=self.in_flight[PRFAAS],
            prfaas_queue_limit=self.settings.prfaas_queue_limit * max(n_prfaas, 1),
            pd_queue_depth=self.in_flight[PD],
            # The local side's queue is bounded like PrfaaS's: without it, PrfaaS overload always looked like
            # PD headroom, and under overload every request went local and saturated PD prefill.
            pd_queue_limit=self.settings.prfaas_queue_limit * max(n_prefill, 1),
            n_prefill=n_prefill,
            n_decode=n_decode,
        )

    def decide(self, req: RequestView, prfaas_available: bool) -> Decision:
        self.incremental.append(float(req.prompt_tokens - req.cached_pd_tokens))
        self.prompts.append(float(req.prompt_tokens))
        return self.policy.route(req, self.state(prfaas_available))

    def started(self, route: str) -> None:
        self.in_flight[route] += 1

    def prefilled(
        self, route: str, kv_bytes: int, transfer_s: float, tail_s: float = 0.0, compute_s: float = 0.0
    ) -> None:
        self.in_flight[route] -= 1
        if route == PRFAAS:
            self.egress.record(kv_bytes, transfer_s, tail_s, compute_s)

    # -- long timescale -----------------------------------------------------------------------------
    def observation(self) -> PeriodObservation | None:
        """None until both clusters' profiles can be fitted from worker measurements."""
        prfaas = fit_profile("prfaas", self.samples[PRFAAS][-256:])
        pd = fit_profile("pd", self.samples[PD][-256:], self.decode_samples[-256:])
        if prfaas is None or pd is None or pd.decode is None or not self.incremental:
            return None
        n_prfaas, n_prefill, n_decode = self.counts
        out = sum(self.output_tokens) / len(self.output_tokens) if self.output_tokens else 128.0
        return PeriodObservation(
            tuple(self.incremental),
            tuple(self.prompts),
            self.egress.capacity_gbps(),
            n_prfaas,
            n_prefill,
            n_decode,
            out,
            prfaas,
            pd,
        )

    def replan(self) -> bool:
        """Re-fit the profiles from the latest samples and re-plan t (on the event loop's thread)."""
        if self.collect is not None:
            self.collect()
        return self._replan()

    def _replan(self) -> bool:
        obs = self.observation()
        if obs is None:
            return False
        self.policy.update(obs)
        self.replans += 1
        split = self.policy.recommended_split
        log.info("re-planned: t=%.0f tokens, recommended split %s", self.policy.threshold_tokens, split)
        return True

    def start(self) -> None:
        if self.settings.replan_period_s > 0:
            self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.replan_period_s)
            try:
                await self.replan_and_rebalance()
            except Exception:  # a failed re-plan keeps the last plan
                log.exception("re-planning failed")

    async def replan_and_rebalance(self) -> int:
        """Re-plan off the event loop, then convert PD workers toward the recommended split."""
        if self.collect is not None:
            self.collect()
        if not await asyncio.to_thread(self._replan):
            return 0
        target = self.policy.recommended_split
        if target is None or self._rebalance is None or target == self._split():
            return 0
        return await self._rebalance(target)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
