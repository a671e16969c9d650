"""Where one request goes (the short timescale, paper §3.4.2): ask both clusters' pools and every decode
worker what they hold and how loaded they are, admit by decode capacity, then let the routing policy
choose the route; the prefill and decode workers are the least loaded (decode: longest cached prefix
first) among the healthy ones."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import grpc
from opentelemetry import trace

from prfaas.kv.prefix import block_hashes
from prfaas.sched.fit import DecodeSample
from prfaas.sched.policy import Decision, RequestView
from prfaas.sched.routing import PD, PRFAAS, WorkerView, pick_worker
from prfaas.service.convert import tenant_salt
from prfaas.v1 import decode_pb2, decode_pb2_grpc
from services.router.cluster import Cluster, PrefillView
from services.router.control import RouterControl
from services.router.health import Health
from services.router.prompt import Prompt
from services.router.report import Routed
from services.router.retry import rpc_error
from services.router.roles import DECODE_ROLE, RoleTable
from services.router.settings import RouterSettings

Views = dict[str, list[PrefillView]]


class Dispatcher:
    def __init__(
        self,
        settings: RouterSettings,
        control: RouterControl,
        clusters: dict[str, Cluster],
        decode: dict[str, decode_pb2_grpc.DecodeServiceStub],
        health: Health,
        roles: RoleTable,
    ) -> None:
        self.settings, self.control, self.clusters = settings, control, clusters
        self.decode, self.health, self.roles = decode, health, roles

    async def decide(self, prompt: Prompt) -> Routed:
        """Probe, admit, route, move the cached prefix if the policy says so, pick the workers."""
        tenant, n, block_size = prompt.tenant_id, len(prompt.token_ids), self.settings.block_size
        hashes = block_hashes(prompt.token_ids, block_size, tenant_salt(tenant))
        prfaas, pd = self.clusters[PRFAAS], self.clusters[PD]
        cached_prfaas, cached_pd, decoders, prfaas_views, pd_views = await asyncio.gather(
            prfaas.cached_tokens(tenant, hashes, n, block_size),
            pd.cached_tokens(tenant, hashes, n, block_size),
            self._decode_views(prompt),
            prfaas.views(),
            pd.views(),
        )
        self._record_samples(prfaas_views, pd_views)
        decoder = pick_worker(self._open(decoders), cache_affine=True)
        decision = self.control.decide(RequestView(n, cached_pd, cached_prfaas), prfaas_available=bool(prfaas_views))
        views = self._answering({PRFAAS: prfaas_views, PD: pd_views})
        decision = _fallback(decision, views)
        holder = decision.cache_cluster
        if decision.move_prefix and holder in self.clusters and holder != decision.route:
            blocks = max(cached_prfaas, cached_pd) // block_size
            await self.clusters[holder].copy_prefix_to(self.clusters[decision.route], tenant, hashes[:blocks])
        prefill = pick_worker([v.worker for v in views[decision.route]], cache_affine=False).address
        routed = Routed(decision, decoder.address, prefill, n)
        _trace(routed, cached_pd, cached_prfaas)
        return routed

    def _answering(self, views: Views) -> Views:
        """When no load probe came back in time, route by health alone: busy is not dead."""
        if any(views.values()):
            return views
        return {c: self.clusters[c].unprobed() for c in views}

    def _open(self, decoders: list[WorkerView]) -> list[WorkerView]:
        """Decode admission: the workers with fewer than `decode_queue_factor` x their slots registered.
        When every one is full the request is refused (RESOURCE_EXHAUSTED, with the retry hint) before any
        prefill is spent on it: a state nobody can decode would only wait at the decode worker."""
        factor = self.settings.decode_queue_factor
        open_ = [w for w in decoders if not w.capacity or w.active < factor * w.capacity]
        if not open_:
            load = ", ".join(f"{w.address} {w.active}/{w.capacity}" for w in decoders)
            raise rpc_error(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"every decode worker is full (registered/slots: {load}; decode_queue_factor {factor:g}): retry later",
            )
        return open_

    def _record_samples(self, prfaas_views: list[PrefillView], pd_views: list[PrefillView]) -> None:
        """Keep the workers' latest measurements for the long timescale's profile fit."""
        self.control.samples[PRFAAS] = [s for v in prfaas_views for s in v.samples]
        self.control.samples[PD] = [s for v in pd_views for s in v.samples]

    async def _decode_views(self, prompt: Prompt) -> list[WorkerView]:
        """Load and cached prefix of every healthy decode worker (all of them when all are marked down)."""
        match = decode_pb2.MatchPrefixRequest(tenant_id=prompt.tenant_id, token_ids=prompt.token_ids)  # built once
        members = list(self.roles.members(DECODE_ROLE))
        candidates = self.health.up(members) or members
        results = await asyncio.gather(*(self._decode_view(a, match) for a in candidates), return_exceptions=True)
        answered = [r for r in results if isinstance(r, tuple)]
        if not answered:
            raise rpc_error(grpc.StatusCode.UNAVAILABLE, "no decode worker answers")
        self.control.decode_samples = [x for _, samples in answered for x in samples]
        return [w for w, _ in answered]

    async def _decode_view(
        self, address: str, match: decode_pb2.MatchPrefixRequest
    ) -> tuple[WorkerView, list[DecodeSample]]:
        stub, timeout_s = self.decode[address], self.settings.probe_timeout_s
        matching = asyncio.ensure_future(stub.MatchPrefix(match, timeout=timeout_s))
        try:
            load = await stub.GetDecodeLoad(decode_pb2.GetDecodeLoadRequest(), timeout=timeout_s)
        except grpc.aio.AioRpcError:
            matching.cancel()
            raise
        # MatchPrefix waits for the engine's current step (a long decode step under load): a worker
        # that answers GetDecodeLoad is alive, it only counts as holding no prefix.
        try:
            cached = int((await matching).cached_tokens)
        except grpc.aio.AioRpcError:
            cached = 0
        samples = [DecodeSample(x.batch, x.seconds) for x in load.samples]
        return WorkerView(address, load.active, cached, load.max_seqs), samples


def _fallback(decision: Decision, views: Views) -> Decision:
    """A route with no answering prefill worker (e.g. naive with PrfaaS down) falls back to the other."""
    if views[decision.route]:
        return decision
    other = PD if decision.route == PRFAAS else PRFAAS
    if not views[other]:
        raise rpc_error(grpc.StatusCode.UNAVAILABLE, "no prefill worker answers")
    return replace(decision, route=other, reason=f"{decision.reason}; no {decision.route} worker answers")


def _trace(routed: Routed, cached_pd: int, cached_prfaas: int) -> None:
    d = routed.decision
    trace.get_current_span().set_attributes(
        {
            "prfaas.prompt_tokens": routed.prompt_tokens,
            "prfaas.cached_pd_tokens": cached_pd,
            "prfaas.cached_prfaas_tokens": cached_prfaas,
            "prfaas.incremental_tokens": d.incremental_tokens,
            "prfaas.threshold_tokens": d.threshold_tokens,
            "prfaas.route": d.route,
            "prfaas.reason": d.reason,
            "prfaas.decode_worker": routed.decoder,
            "prfaas.prefill_worker": routed.prefill,
            "prfaas.move_prefix": d.move_prefix,
        }
    )
