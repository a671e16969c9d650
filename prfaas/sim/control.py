"""The simulator's slow loop: sampling, the policy's long timescale, PD role changes, and link events.

Every ``update_period_s`` the controller hands the policy a ``PeriodObservation`` (the incremental lengths
routed in the period, the measured link bandwidth, the instance counts and the profiles) and applies the
split it recommends by converting PD instances between prefill and decode (§3.4.3 long timescale). An
instance being converted first drains: it takes no new work, its queued requests move to its peers, and it
switches role once its running work is done. A new recommendation waits until running conversions finish.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from statistics import fmean
from typing import TYPE_CHECKING

from prfaas.sched.policy import PD, PRFAAS, PeriodObservation, Split
from prfaas.sim.instances import DecodeInstance, PrefillInstance, SimRequest

if TYPE_CHECKING:
    from prfaas.sim.simulator import Simulator


@dataclass(frozen=True, slots=True)
class LengthSample:
    """Lengths known before the run (yesterday's traffic): seeds the policy's first plan."""

    incremental_tokens: tuple[float, ...]
    prompt_tokens: tuple[float, ...]
    output_tokens: float


@dataclass(frozen=True, slots=True)
class Sample:
    """The measured state every ``sample_interval_s``."""

    time_s: float
    egress_utilization: float
    link_gbps: float
    threshold_tokens: float
    prfaas_queue: int
    pd_queue: int
    n_prefill: int
    n_decode: int


class Controller:
    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.samples: list[Sample] = []
        self.role_changes: list[tuple[float, Split]] = []
        self._incremental: list[float] = []
        self._prompts: list[float] = []
        self._outputs: list[float] = []
        self._output_tokens = 1.0
        self._converting = 0

    def start(self, prior: LengthSample | None) -> None:
        config, events = self.sim.config, self.sim.events
        if prior is not None:
            self._output_tokens = prior.output_tokens
            self._update(prior.incremental_tokens, prior.prompt_tokens)
        events.schedule(0.0, self._tick)
        events.schedule(config.update_period_s, self._period)
        for event in config.link_events:
            events.schedule(event.at_s, self._set_link, event.gbps)

    def on_routed(self, req: SimRequest) -> None:
        self._incremental.append(req.prompt_tokens - req.cached_pd_tokens)
        self._prompts.append(req.prompt_tokens)
        self._outputs.append(req.output_tokens)

    def _tick(self, _: object = None) -> None:
        sim = self.sim
        state = sim.cluster_state()
        self.samples.append(
            Sample(
                sim.now_s,
                state.egress_utilization,
                state.link_gbps,
                sim.policy.threshold_tokens,
                state.prfaas_queue_depth,
                state.pd_queue_depth,
                state.n_prefill,
                state.n_decode,
            )
        )
        if sim.now_s + sim.config.sample_interval_s < sim.config.duration_s:
            sim.events.schedule(sim.now_s + sim.config.sample_interval_s, self._tick)

    def _period(self, _: object = None) -> None:
        if self._outputs:
            self._output_tokens = fmean(self._outputs)
        self._update(tuple(self._incremental), tuple(self._prompts))
        self._incremental, self._prompts, self._outputs = [], [], []
        sim = self.sim
        if sim.now_s + sim.config.update_period_s < sim.config.duration_s:
            sim.events.schedule(sim.now_s + sim.config.update_period_s, self._period)

    def _update(self, incremental: tuple[float, ...], prompts: tuple[float, ...]) -> None:
        sim = self.sim
        observation = PeriodObservation(
            incremental_tokens=incremental,
            prompt_tokens=prompts,
            link_gbps=sim.egress.capacity_gbps,
            n_prfaas=len(sim.prefill[PRFAAS].instances),
            n_prefill=len(sim.prefill[PD].instances),
            n_decode=len(sim.decode.instances),
            output_tokens=self._output_tokens,
            prfaas_profile=sim.deployment.prfaas_profile,
            pd_profile=sim.deployment.pd_profile,
        )
        sim.policy.update(observation)
        self.apply_split(sim.policy.recommended_split)

    def _set_link(self, gbps: float) -> None:
        self.sim.egress.set_capacity_gbps(gbps)
        self.sim.ingress.set_capacity_gbps(gbps)

    # -- role changes -----------------------------------------------------------------------------------------
    def apply_split(self, split: Split | None) -> None:
        """Drain ``|N_p(target) - N_p|`` instances of the surplus role, least loaded first; at least one
        instance of each role always keeps serving."""
        sim = self.sim
        local, decode = sim.prefill[PD], sim.decode
        total = len(local.instances) + len(decode.instances)
        if split is None or self._converting or total < 2 or not local.instances or not decode.instances:
            return
        delta = min(max(split.n_prefill, 1), total - 1) - len(local.instances)
        if delta > 0:
            for decoder in sorted(decode.instances, key=lambda d: d.load)[:delta]:
                self._drain_decoder(decoder)
        elif delta < 0:
            now = sim.now_s
            for instance in sorted(local.instances, key=lambda i: i.backlog_s(now))[:-delta]:
                self._drain_prefill(instance)

    def _drain_decoder(self, decoder: DecodeInstance) -> None:
        decoder.draining, self._converting = True, self._converting + 1
        moved, decoder.waiting = decoder.waiting, deque()
        for req in moved:
            self.sim.admit(req)
        if decoder.active == 0:
            self.on_idle_decoder(decoder)

    def _drain_prefill(self, instance: PrefillInstance) -> None:
        instance.draining, self._converting = True, self._converting + 1
        local = self.sim.prefill[PD]
        while instance.queue:
            local.outstanding -= 1  # dispatch counts it again
            self.sim.dispatch(instance.pop())
        if instance.current is None:
            self.on_idle_prefill(instance)

    def on_idle_decoder(self, decoder: DecodeInstance) -> None:
        self.sim.decode.instances.remove(decoder)
        self.sim.prefill[PD].instances.append(PrefillInstance(self.sim.deployment.pd_profile))
        self._converted()

    def on_idle_prefill(self, instance: PrefillInstance) -> None:
        self.sim.prefill[PD].instances.remove(instance)
        self.sim.decode.instances.append(self.sim.new_decoder())
        self._converted()

    def _converted(self) -> None:
        self._converting -= 1
        if not self._converting:
            sim = self.sim
            split = Split(len(sim.prefill[PD].instances), len(sim.decode.instances))
            self.role_changes.append((sim.now_s, split))
