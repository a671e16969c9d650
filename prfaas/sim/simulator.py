"""Discrete-event simulation of a PrfaaS-PD deployment (§3.1) driven by a ``RoutingPolicy``.

A request's life:

1. **arrive**: look up its prefix in both clusters' caches, build the measured ``ClusterState`` and ask the
   policy where to prefill (``policy.route``, the short timescale of §3.4.3);
2. **move prefix** (only if the decision says so): copy the longer cached prefix across the link first;
3. **prefill** on the least-backlogged instance of the chosen cluster: ``T_prefill(l)`` for the
   ``l = prompt - cached prefix`` tokens not cached there (Eqs. 3-4 cost model);
4. **transfer**: PrfaaS KV (what PD lacks, ``S_kv(prompt - l_pd)``) streams over the shared link while the
   prefill produces it (layer-wise overlap, Eq. 3); PD-P KV moves over RDMA, instantly (Eq. 4);
5. **decode** on the least-loaded PD-D instance with continuous batching (Eq. 5).

The long timescale (``policy.update``, sampling, link events, when to change roles) lives in ``control``, which
sees and changes the simulation only through the methods under "the controller's handles" below.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from typing import Any

from prfaas.sched.policy import PD, PRFAAS, ClusterState, RequestView, RoutingPolicy
from prfaas.sim.arrivals import Arrival
from prfaas.sim.cache import PrefixCache
from prfaas.sim.config import Deployment, SimConfig
from prfaas.sim.control import Controller, LengthSample
from prfaas.sim.events import EventQueue, Handler
from prfaas.sim.instances import DecodeInstance, PrefillInstance, SimRequest
from prfaas.sim.link import Flow, Link
from prfaas.sim.pools import DecodePool, InstanceCounts, PrefillPool


class Simulator:
    """One run: a deployment, a policy, an arrival stream. ``run()`` once, then read ``requests``."""

    def __init__(
        self, deployment: Deployment, policy: RoutingPolicy, arrivals: Sequence[Arrival], config: SimConfig
    ) -> None:
        self.deployment, self.policy, self.config = deployment, policy, config
        self.events = EventQueue()
        window, flows = config.utilization_window_s, config.max_link_flows
        self.egress = Link(self.events, deployment.link_gbps, window, flows)  # PrfaaS -> PD: KV and prefixes
        self.ingress = Link(self.events, deployment.link_gbps, window, flows)  # PD -> PrfaaS: prefixes only
        self.prefill = {
            PRFAAS: PrefillPool([PrefillInstance(deployment.prfaas_profile) for _ in range(deployment.n_prfaas)]),
            PD: PrefillPool([PrefillInstance(deployment.pd_profile) for _ in range(deployment.split.n_prefill)]),
        }
        self.decode = DecodePool([self._new_decoder() for _ in range(deployment.split.n_decode)])
        self.caches = {name: PrefixCache(config.cache_capacity_blocks, config.block_tokens) for name in self.prefill}
        self.requests: list[SimRequest] = []
        self.flows: dict[int, Flow] = {}
        self._arrivals = arrivals
        self._converting = 0
        self.control = Controller(self)

    def _new_decoder(self) -> DecodeInstance:
        return DecodeInstance(self.deployment.decode_batch_size, self.deployment.decode_step_s)

    @property
    def now_s(self) -> float:
        return self.events.now_s

    def run(self, prior: LengthSample | None = None) -> Simulator:
        """Simulate to the end of the drain; ``prior`` seeds the policy's first plan (and the PD split)."""
        if self._arrivals:
            self.events.schedule(self._arrivals[0].at_s, self._on_arrival, 0)
        self.control.start(prior)
        self.events.run(self.config.duration_s + self.config.drain_s)
        return self

    # -- 1. arrival and routing ---------------------------------------------------------------------------
    def _on_arrival(self, index: int) -> None:
        arrival = self._arrivals[index]
        if index + 1 < len(self._arrivals):
            self.events.schedule(self._arrivals[index + 1].at_s, self._on_arrival, index + 1)
        req = SimRequest(index, self.now_s, arrival.prompt_tokens, arrival.output_tokens, arrival.block_keys)
        self.requests.append(req)
        view = RequestView(req.prompt_tokens, self._cached(req, PD), self._cached(req, PRFAAS))
        decision = self.policy.route(view, self.cluster_state())
        req.decision, req.route, req.cached_pd_tokens = decision, self._feasible(decision.route), view.cached_pd_tokens
        self.control.on_routed(req)
        if decision.move_prefix and req.route == decision.route and decision.cache_cluster is not None:
            self._move_prefix(req, view, decision.cache_cluster)
        else:
            self._dispatch(req)

    def _cached(self, req: SimRequest, cluster: str) -> int:
        return self.caches[cluster].match_tokens(req.block_keys, req.prompt_tokens)

    def cluster_state(self) -> ClusterState:
        """What the router measures now (§3.4.3): egress utilisation and queue depths."""
        remote, local = self.prefill[PRFAAS], self.prefill[PD]
        per_instance = self.config.queue_limit_per_instance
        return ClusterState(
            prfaas_available=bool(remote.instances),
            egress_utilization=self.egress.utilization(),
            link_gbps=self.egress.capacity_gbps,
            prfaas_queue_depth=remote.outstanding,
            prfaas_queue_limit=math.ceil(per_instance * len(remote.instances)),
            pd_queue_depth=local.outstanding,
            n_prefill=len(local.serving()),
            n_decode=len(self.decode.serving()),
            pd_queue_limit=math.ceil(per_instance * len(local.serving())),
        )

    def _feasible(self, route: str) -> str:
        """The routed cluster, or the other one if it has no prefill instance serving."""
        other = PD if route == PRFAAS else PRFAAS
        return route if self.prefill[route].serving() or not self.prefill[other].serving() else other

    # -- 2. cross-cluster prefix move -----------------------------------------------------------------------
    def _move_prefix(self, req: SimRequest, view: RequestView, holder: str) -> None:
        """Copy the holder's longer prefix to the computing cluster: ``S_kv`` of the tokens it lacks (the
        full-attention blocks plus the linear-attention state at the prefix boundary)."""
        cached = {PD: view.cached_pd_tokens, PRFAAS: view.cached_prfaas_tokens}
        req.moved_tokens = cached[holder]
        size = self.deployment.prfaas_profile.kv_bytes(cached[holder] - cached[req.route])
        link = self.egress if holder == PRFAAS else self.ingress
        link.start(size, None, lambda: self._on_prefix_moved(req))

    def _on_prefix_moved(self, req: SimRequest) -> None:
        blocks = req.moved_tokens // self.config.block_tokens
        self.caches[req.route].insert(req.block_keys[:blocks])
        self._dispatch(req)

    # -- 3. prefill -----------------------------------------------------------------------------------------
    def _dispatch(self, req: SimRequest) -> None:
        pool = self.prefill[req.route]
        instance = pool.pick(self.now_s)
        incremental = req.decision.incremental_tokens if req.decision is not None else req.prompt_tokens
        req.prefill_estimate_s = instance.profile.prefill_s(max(incremental, 1))
        instance.push(req)
        pool.outstanding += 1
        if instance.current is None:
            self._start_prefill(instance)

    def _start_prefill(self, instance: PrefillInstance) -> None:
        req = instance.pop()
        hit = max(self.caches[req.route].match_tokens(req.block_keys, req.prompt_tokens, touch=True), req.moved_tokens)
        req.computed_tokens = req.prompt_tokens - min(hit, req.prompt_tokens - 1)
        duration_s = instance.profile.prefill_s(req.computed_tokens)
        req.prefill_start_s, instance.current, instance.busy_until_s = self.now_s, req, self.now_s + duration_s
        self.events.schedule(self.now_s + duration_s, self._end_prefill, instance)
        if req.route == PRFAAS:
            self._start_kv_transfer(req, duration_s)

    def _end_prefill(self, instance: PrefillInstance) -> None:
        req = instance.current
        assert req is not None
        instance.current = None
        req.prefill_end_s, req.prefill_done = self.now_s, True
        self.caches[req.route].insert(req.block_keys)
        if req.route == PD or req.kv_sent:
            self._kv_ready(req)
        else:
            self.egress.uncap(self.flows[req.id])
        if instance.queue:
            self._start_prefill(instance)
        elif instance.draining:
            self._prefill_to_decoder(instance)

    # -- 4. KV transfer over the link (PrfaaS route only) ---------------------------------------------------
    def _start_kv_transfer(self, req: SimRequest, prefill_s: float) -> None:
        """Send what PD lacks, ``S_kv(prompt - l_pd)``, capped at the production rate ``S_kv / T_prefill``."""
        pd_hit = self._cached(req, PD)
        req.transfer_bytes = self.deployment.prfaas_profile.kv_bytes(req.prompt_tokens - pd_hit)
        self.flows[req.id] = self.egress.start(
            req.transfer_bytes, req.transfer_bytes / prefill_s, lambda: self._on_kv_sent(req)
        )

    def _on_kv_sent(self, req: SimRequest) -> None:
        req.kv_sent = True
        del self.flows[req.id]
        if req.prefill_done:
            self._kv_ready(req)

    def _kv_ready(self, req: SimRequest) -> None:
        """The KV is on a decoder: the first token is out (TTFT) and PD's pool now holds the whole prompt."""
        req.first_token_s = self.now_s
        self.prefill[req.route].outstanding -= 1
        if req.route == PRFAAS:
            self.caches[PD].insert(req.block_keys)
        self._admit(req)

    # -- 5. decode ------------------------------------------------------------------------------------------
    def _admit(self, req: SimRequest) -> None:
        decoder = self.decode.pick()
        if decoder.active < decoder.batch_size:
            self._join(req, decoder)
        else:
            decoder.waiting.append(req)

    def _join(self, req: SimRequest, decoder: DecodeInstance) -> None:
        finish_s = decoder.finish_time_s(decoder.join(self.now_s), req.output_tokens)
        self.events.schedule(finish_s, self._finish, (req, decoder))

    def _finish(self, item: tuple[SimRequest, DecodeInstance]) -> None:
        req, decoder = item
        req.finish_s = self.now_s
        decoder.active -= 1
        if decoder.waiting:
            self._join(decoder.waiting.popleft(), decoder)
        elif decoder.draining and decoder.active == 0:
            self._decoder_to_prefill(decoder)

    # -- the controller's handles ----------------------------------------------------------------------------
    def schedule(self, at_s: float, handler: Handler, arg: Any = None) -> None:
        self.events.schedule(at_s, handler, arg)

    @property
    def link_gbps(self) -> float:
        """The PrfaaS -> PD link's capacity now."""
        return self.egress.capacity_gbps

    def set_link_gbps(self, gbps: float) -> None:
        """A link event: both directions change capacity (flows in progress continue at the new rate)."""
        self.egress.set_capacity_gbps(gbps)
        self.ingress.set_capacity_gbps(gbps)

    def instance_counts(self) -> InstanceCounts:
        return InstanceCounts(
            len(self.prefill[PRFAAS].instances), len(self.prefill[PD].instances), len(self.decode.instances)
        )

    @property
    def converting(self) -> int:
        """PD instances draining for a role change."""
        return self._converting

    def convert_decoders(self, count: int) -> None:
        """Turn the ``count`` least loaded decoders into PD prefill instances. Each drains first: it takes no
        new sequences, its waiting ones move to its peers, and it switches once its running ones finish."""
        for decoder in sorted(self.decode.instances, key=lambda d: d.load)[:count]:
            decoder.draining, self._converting = True, self._converting + 1
            moved, decoder.waiting = decoder.waiting, deque()
            for req in moved:
                self._admit(req)
            if decoder.active == 0:
                self._decoder_to_prefill(decoder)

    def convert_prefills(self, count: int) -> None:
        """Turn the ``count`` PD prefill instances with the least backlog into decoders. Each drains first: its
        queued requests move to its peers, and it switches once its running prefill ends."""
        local, now = self.prefill[PD], self.now_s
        for instance in sorted(local.instances, key=lambda i: i.backlog_s(now))[:count]:
            instance.draining, self._converting = True, self._converting + 1
            while instance.queue:
                local.outstanding -= 1  # dispatch counts it again
                self._dispatch(instance.pop())
            if instance.current is None:
                self._prefill_to_decoder(instance)

    def _decoder_to_prefill(self, decoder: DecodeInstance) -> None:
        self.decode.instances.remove(decoder)
        self.prefill[PD].instances.append(PrefillInstance(self.deployment.pd_profile))
        self._converted()

    def _prefill_to_decoder(self, instance: PrefillInstance) -> None:
        self.prefill[PD].instances.remove(instance)
        self.decode.instances.append(self._new_decoder())
        self._converted()

    def _converted(self) -> None:
        self._converting -= 1
        if not self._converting:
            self.control.on_roles_settled()
