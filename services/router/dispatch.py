"""Where one request goes (the short timescale, paper §3.4.2), decided without asking anyone: the cached
prefixes come from the KV index and the loads from the latest load reports (both fed by the sources' state
streams, `watch.py`) plus the requests this router sent since each report. Then: admit by decode
capacity, let the routing policy choose the route, and pick the least loaded prefill worker and the decode
worker with the longest cached prefix (then least loaded) among the healthy ones.

A stale index costs at most a smaller prefix hit than announced (the decode worker's answer on `TransferKv`
and the pool's `GetBlocks` are authoritative), never a wrong token. A source whose stream has not synced
yet counts as healthy and idle with nothing cached: busy is not dead, and the attempt's liveness check
catches a dead one.
"""

from __future__ import annotations

from dataclasses import replace

import grpc
from opentelemetry import trace

from prfaas.kv.prefix import block_hashes
from prfaas.sched.fit import DecodeSample, PrefillSample
from prfaas.sched.policy import Decision, RequestView
from prfaas.sched.routing import PD, PRFAAS, WorkerView, pick_worker
from prfaas.service.convert import tenant_salt
from prfaas.state.table import SourceTable
from services.router.cluster import Cluster
from services.router.control import RouterControl
from services.router.health import Health
from services.router.prompt import Prompt
from services.router.report import Routed
from services.router.retry import rpc_error
from services.router.roles import DECODE_ROLE, RoleTable
from services.router.settings import RouterSettings

Views = dict[str, list[WorkerView]]


class Dispatcher:
    def __init__(
        self,
        settings: RouterSettings,
        control: RouterControl,
        clusters: dict[str, Cluster],
        table: SourceTable,
        health: Health,
        roles: RoleTable,
    ) -> None:
        self.settings, self.control, self.clusters = settings, control, clusters
        self.table, self.health, self.roles = table, health, roles

    async def decide(self, prompt: Prompt) -> Routed:
        """Look up, admit, route, move the cached prefix if the policy says so, pick the workers."""
        n, block_size = len(prompt.token_ids), self.settings.block_size
        hashes = block_hashes(prompt.token_ids, block_size, tenant_salt(prompt.tenant_id))
        limit = max(0, (n - 1) // block_size)
        pool_hits = self._pool_hits(hashes, limit)
        cached = {c: (pool_hits.get(c) or 0) * block_size for c in self.clusters}
        decoder = self._pick_decoder(hashes, limit)
        views = {c: self._prefill_views(c) for c in self.clusters}
        request = RequestView(n, cached[PD], cached[PRFAAS])
        decision = _fallback(self.control.decide(request, prfaas_available=bool(views[PRFAAS])), views)
        holder = decision.cache_cluster
        if decision.move_prefix and holder in self.clusters and holder != decision.route:
            blocks = max(cached.values()) // block_size
            await self.clusters[holder].copy_prefix_to(self.clusters[decision.route], prompt.tenant_id, hashes[:blocks])
            pool_hits[decision.route] = blocks
        prefill = pick_worker(views[decision.route], cache_affine=False).address
        routed = Routed(decision, decoder, prefill, n, pool_hits.get(decision.route))
        self.table.sent(decoder)
        self.table.sent(prefill)
        _trace(routed, cached[PD], cached[PRFAAS])
        return routed

    def _pool_hits(self, hashes: list[bytes], limit: int) -> dict[str, int | None]:
        """Per cluster: the hybrid prefix its pool holds in blocks; None where the router does not know
        (no pool, or its stream is not synced: the prefill worker looks it up itself)."""
        pools = {c: cl.pool_address for c, cl in self.clusters.items() if cl.pool_address}
        known = {c: a for c, a in pools.items() if self.health.is_up(a) and self.table.synced(a)}
        hits = self.table.index.hybrid_prefixes(hashes, limit, self.table.index.mask(known.values()))
        return {c: hits.get(a, 0) if c in known else None for c, a in pools.items()}

    def _pick_decoder(self, hashes: list[bytes], limit: int) -> str:
        """Decode admission, then the worker rule: among the healthy decode workers (all of them when all
        are marked down) with room, the longest cached prefix of the prompt first, then the least busy (then
        the address). Costs O(prompt blocks + holders of its prefix) for the prefix and one pass over the
        workers' counters for the load."""
        members = self.roles.members(DECODE_ROLE)
        candidates = self.health.up(members) or members
        if not candidates:
            raise rpc_error(grpc.StatusCode.UNAVAILABLE, "no decode worker")
        open_ = self._open(candidates)
        index = self.table.index
        depth, holders = index.deepest(hashes, limit, index.mask(open_))
        busy = self.table.busy
        return min(holders if depth else open_, key=lambda a: (busy.get(a, 0), a))

    def _open(self, candidates: list[str]) -> list[str]:
        """Decode admission: the workers with fewer than `decode_queue_factor` x their slots registered
        (requests this router sent since their last report included). When every one is full the request is
        refused (RESOURCE_EXHAUSTED, with the retry hint) before any prefill is spent on it: a state nobody
        can decode would only wait at the decode worker. A worker whose stream has not synced counts as idle."""
        factor, busy, slots = self.settings.decode_queue_factor, self.table.busy, self.table.slots
        open_ = [a for a in candidates if not slots.get(a) or busy[a] < factor * slots[a]]
        if not open_:
            load = ", ".join(f"{a} {busy[a]}/{slots[a]}" for a in candidates)
            raise rpc_error(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"every decode worker is full (registered/slots: {load}; decode_queue_factor {factor:g}): retry later",
            )
        return open_

    def _prefill_views(self, cluster: str) -> list[WorkerView]:
        """The cluster's healthy prefill workers with their queues."""
        busy = self.table.busy
        return [WorkerView(a, busy.get(a, 0)) for a in self.health.up(list(self.clusters[cluster].members()))]

    def collect_samples(self) -> None:
        """Hand the long timescale the workers' latest measurements (from their load reports)."""
        for cluster in self.clusters:
            reports = [s.load for a in self.clusters[cluster].members() if (s := self.table.load(a))]
            self.control.samples[cluster] = [
                PrefillSample(x.tokens, x.seconds, x.kv_bytes) for r in reports for x in r.prefill_samples
            ]
        decoders = [s.load for a in self.roles.members(DECODE_ROLE) if (s := self.table.load(a))]
        self.control.decode_samples = [DecodeSample(x.batch, x.seconds) for r in decoders for x in r.decode_samples]


def _fallback(decision: Decision, views: Views) -> Decision:
    """A route with no healthy prefill worker (e.g. naive with PrfaaS down) falls back to the other."""
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
