"""Router: for each request, ask both clusters what they cache, route by the threshold rule, pick the
decode worker, start the prefill and stream the decode worker's tokens back to the client."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace

import grpc
from opentelemetry import trace

from prfaas.kv.prefix import block_hashes
from prfaas.model.checkpoint import read_config
from prfaas.model.config import ModelConfig
from prfaas.model.tiny import resolve_model
from prfaas.model.tokenizer import Tokenizer, load_tokenizer
from prfaas.sched.fit import DecodeSample
from prfaas.sched.policy import RequestView, Split
from prfaas.sched.routing import PD, PRFAAS, WorkerView, pick_worker
from prfaas.service.auth import BearerTokenInterceptor
from prfaas.service.convert import check_request_id, check_tenant, sampling_from_pb, tenant_salt
from prfaas.service.grpc_server import RunningServer, channel, start_server
from prfaas.service.status import RETRY_AFTER_KEY, abort, shed
from prfaas.service.tls import service_tls
from prfaas.telemetry import metrics
from prfaas.telemetry.tracing import tracer
from prfaas.v1 import (
    common_pb2,
    decode_pb2,
    decode_pb2_grpc,
    prefill_pb2,
    router_pb2,
    router_pb2_grpc,
)
from services.router.cluster import Cluster, PrefillView
from services.router.control import RouterControl
from services.router.health import Health
from services.router.report import Routed, breakdown, observe_prefill, route_info
from services.router.retry import PREFILL as PREFILL_STAGE
from services.router.retry import AttemptFailed, attempt_id, race, resumed, rpc_error, should_retry, while_alive
from services.router.roles import DECODE, PREFILL, RoleTable
from services.router.settings import RouterSettings, split_addresses

log = logging.getLogger(__name__)


class BadRequest(ValueError):
    """The client's request is invalid; the message says what to fix."""


@dataclass(frozen=True, slots=True)
class Prompt:
    request_id: str
    tenant_id: str
    token_ids: list[int]
    received: tuple[int, ...] = ()  # output tokens the client has from an earlier, broken call


class RouterServicer(router_pb2_grpc.RouterServiceServicer):
    def __init__(self, settings: RouterSettings) -> None:
        self.settings = settings
        folder = resolve_model(settings.model)
        self.model: ModelConfig = read_config(folder)
        self.tokenizer: Tokenizer | None = load_tokenizer(settings.model, folder)
        dual, pd_prefill = split_addresses(settings.pd_workers), split_addresses(settings.pd_prefill)
        decoders = split_addresses(settings.decode)
        self.roles = RoleTable(pd_prefill, decoders, dual, settings.pd_prefill_workers)
        self.tls = service_tls(settings)
        self.health = Health(settings.health_interval_s, self.tls)
        self.prfaas = Cluster(
            PRFAAS, split_addresses(settings.prfaas_prefill), settings.prfaas_pool, tls=self.tls, health=self.health
        )
        self.pd = Cluster(
            PD,
            [*pd_prefill, *dual],
            settings.pd_pool,
            lambda: self.roles.members(PREFILL),
            tls=self.tls,
            health=self.health,
        )
        self.clusters = {PRFAAS: self.prfaas, PD: self.pd}
        self.decode = {a: decode_pb2_grpc.DecodeServiceStub(channel(a, self.tls)) for a in [*decoders, *dual]}
        self.inflight = 0  # Generate calls admitted and not finished (bounded by max_inflight_requests)
        self.control = RouterControl(settings, len(self.prfaas.prefill), self.roles.split, self.rebalance)

    async def rebalance(self, target: Split) -> int:
        """Convert dual-role PD workers toward `target` (drain, then switch)."""

        async def prefill_in_flight(addr: str) -> int:
            load = await self.pd.prefill[addr].GetLoad(prefill_pb2.GetLoadRequest(), timeout=2.0)
            return int(load.queue_depth)

        async def decode_in_flight(addr: str) -> int:
            load = await self.decode[addr].GetDecodeLoad(decode_pb2.GetDecodeLoadRequest(), timeout=2.0)
            return int(load.active)

        probes = {PREFILL: prefill_in_flight, DECODE: decode_in_flight}
        return await self.roles.rebalance(target, probes, self.settings.drain_timeout_s)

    def _prompt(self, request: router_pb2.GenerateRequest) -> Prompt:
        rid = request.request_id or f"req-{uuid.uuid4().hex[:16]}"
        try:
            check_request_id(rid)
            check_tenant(request.tenant_id)
        except ValueError as exc:
            raise BadRequest(str(exc)) from exc
        kind = request.WhichOneof("prompt")
        if kind == "text":
            if self.tokenizer is None:
                raise BadRequest(f"model {self.settings.model} has no tokenizer here: send token_ids")
            ids = self.tokenizer.encode(request.text)
        elif kind == "token_ids":
            ids = list(request.token_ids.ids)
        else:
            raise BadRequest("prompt is missing: set text or token_ids")
        max_new = request.sampling.max_new_tokens or 32
        self._check_ids(ids, max_new)
        received = tuple(request.resume_token_ids)
        if len(received) >= max_new:
            raise BadRequest(
                f"resume_token_ids has {len(received)} tokens, max_new_tokens is {max_new}: nothing is left to generate"
            )
        if received and max(received) >= self.model.vocab_size:
            raise BadRequest(f"resume_token_ids holds a token id outside the vocabulary [0, {self.model.vocab_size})")
        return Prompt(rid, request.tenant_id, ids, received)

    def _check_ids(self, ids: list[int], max_new: int) -> None:
        if not ids:
            raise BadRequest("prompt is empty: give at least one token")
        vocab = self.model.vocab_size
        bad = None if max(ids) < vocab else next(i for i, t in enumerate(ids) if t >= vocab)  # max(): C speed
        if bad is not None:
            raise BadRequest(f"token id {ids[bad]} at position {bad} is outside the vocabulary [0, {vocab})")
        limit = self.settings.max_model_len or self.model.max_position_embeddings
        if len(ids) + max_new > limit:
            raise BadRequest(
                f"prompt of {len(ids)} tokens plus max_new_tokens {max_new} exceeds the model's "
                f"{limit}: shorten the prompt or lower max_new_tokens"
            )

    async def _decide(self, prompt: Prompt) -> Routed:
        """Ask both clusters and every decode worker, then let the routing policy choose (short timescale)."""
        tenant, n = prompt.tenant_id, len(prompt.token_ids)
        hashes = block_hashes(prompt.token_ids, self.settings.block_size, tenant_salt(tenant))
        cached_prfaas, cached_pd, decoders, prfaas_views, pd_views = await asyncio.gather(
            self.prfaas.cached_tokens(tenant, hashes, n, self.settings.block_size),
            self.pd.cached_tokens(tenant, hashes, n, self.settings.block_size),
            self._decode_views(prompt),
            self.prfaas.views(),
            self.pd.views(),
        )
        self._record_samples(prfaas_views, pd_views)
        decoder = pick_worker(self._open(decoders), cache_affine=True)
        decision = self.control.decide(RequestView(n, cached_pd, cached_prfaas), prfaas_available=bool(prfaas_views))
        views = {PRFAAS: prfaas_views, PD: pd_views}
        if not prfaas_views and not pd_views:  # no load probe came back in time: busy is not dead
            views = {c: self.clusters[c].unprobed() for c in views}
        if not views[decision.route]:  # e.g. naive with PrfaaS down, or no local prefill worker
            other = PD if decision.route == PRFAAS else PRFAAS
            if not views[other]:
                raise rpc_error(grpc.StatusCode.UNAVAILABLE, "no prefill worker answers")
            decision = replace(decision, route=other, reason=f"{decision.reason}; no {decision.route} worker answers")
        if (
            decision.move_prefix
            and decision.cache_cluster in self.clusters
            and decision.cache_cluster != decision.route
        ):
            blocks = max(cached_prfaas, cached_pd) // self.settings.block_size
            await self.clusters[decision.cache_cluster].copy_prefix_to(
                self.clusters[decision.route], tenant, hashes[:blocks]
            )
        prefill = pick_worker([v.worker for v in views[decision.route]], cache_affine=False).address
        trace.get_current_span().set_attributes(
            {
                "prfaas.prompt_tokens": n,
                "prfaas.cached_pd_tokens": cached_pd,
                "prfaas.cached_prfaas_tokens": cached_prfaas,
                "prfaas.incremental_tokens": decision.incremental_tokens,
                "prfaas.threshold_tokens": decision.threshold_tokens,
                "prfaas.route": decision.route,
                "prfaas.reason": decision.reason,
                "prfaas.decode_worker": decoder.address,
                "prfaas.prefill_worker": prefill,
                "prfaas.move_prefix": decision.move_prefix,
            }
        )
        return Routed(decision, decoder.address, prefill, n)

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
        match_request = decode_pb2.MatchPrefixRequest(tenant_id=prompt.tenant_id, token_ids=prompt.token_ids)  # once

        async def view(addr: str) -> tuple[WorkerView, list[DecodeSample]]:
            stub = self.decode[addr]
            matching = asyncio.ensure_future(stub.MatchPrefix(match_request, timeout=2.0))
            try:
                load = await stub.GetDecodeLoad(decode_pb2.GetDecodeLoadRequest(), timeout=2.0)
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
            return WorkerView(addr, load.active, cached, load.max_seqs), samples

        members = list(self.roles.members(DECODE))
        candidates = self.health.up(members) or members  # all marked down: try them all rather than fail
        results = await asyncio.gather(*(view(a) for a in candidates), return_exceptions=True)
        answered = [r for r in results if isinstance(r, tuple)]
        if not answered:
            raise rpc_error(grpc.StatusCode.UNAVAILABLE, "no decode worker answers")
        self.control.decode_samples = [x for _, samples in answered for x in samples]
        return [w for w, _ in answered]

    async def Generate(
        self, request: router_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[router_pb2.GenerateResponse]:
        arrival = time.perf_counter()
        if self.inflight >= self.settings.max_inflight_requests:
            await shed(
                context,
                f"router has {self.inflight} requests in flight (max_inflight_requests): retry later",
                self.settings.retry_after_ms,
            )
        self.inflight += 1
        try:
            async for msg in self._admitted(request, context, arrival):
                yield msg
        finally:
            self.inflight -= 1

    async def _admitted(
        self, request: router_pb2.GenerateRequest, context: grpc.aio.ServicerContext, arrival: float
    ) -> AsyncIterator[router_pb2.GenerateResponse]:
        try:
            prompt = self._prompt(request)
            sampling_from_pb(request.sampling)
        except (BadRequest, ValueError) as exc:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        timeout = self._timeout(request, context)
        try:
            async for msg in self._serve(prompt, request.sampling, timeout, arrival):
                yield msg
        except grpc.aio.AioRpcError as exc:
            log.warning("request %s failed: %s: %s", prompt.request_id, exc.code().name, exc.details())
            if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:  # a worker's queue is full: pass its hint on
                await shed(context, f"{exc.details()}", _retry_after_ms(exc, self.settings.retry_after_ms))
            await abort(context, exc.code(), f"{exc.details()}")

    def _timeout(self, request: router_pb2.GenerateRequest, context: grpc.aio.ServicerContext) -> float:
        limits = [self.settings.request_timeout_s]
        if request.timeout_ms:
            limits.append(request.timeout_ms / 1000)
        remaining = context.time_remaining()
        if remaining is not None:
            limits.append(remaining)
        return max(0.001, min(limits))

    async def _serve(
        self, prompt: Prompt, sampling: common_pb2.SamplingParams, timeout: float, arrival: float
    ) -> AsyncIterator[router_pb2.GenerateResponse]:
        """Attempts until one finishes; a failed one is retried by `retry.should_retry`, continuing after
        the tokens the client already has (`retry.resumed`)."""
        deadline = time.monotonic() + timeout
        ids = list(prompt.received)  # tokens the client has received, over all attempts (and earlier calls)
        call = secrets.token_hex(3)
        for attempt in range(self.settings.max_attempts):
            current, left = resumed(prompt.token_ids, ids, sampling)
            step = replace(prompt, request_id=attempt_id(prompt.request_id, call, attempt), token_ids=current)
            finished = False
            try:
                async for msg in self._attempt(step, left, deadline - time.monotonic(), arrival, ids, attempt):
                    finished = msg.finish_reason != common_pb2.FINISH_REASON_UNSPECIFIED
                    yield msg
                return
            except AttemptFailed as exc:
                failure = exc.failure
                if failure.worker_down:
                    self.health.mark_down(failure.address, failure.describe())
                if finished:  # the worker failed after the last token: the client has everything
                    return
                if not should_retry(failure, attempt, self.settings.max_attempts, deadline - time.monotonic()):
                    raise exc.error from exc  # the worker's own status and trailers (a retry-after hint)
                metrics.REQUEST_RETRIES.labels(failure.stage).inc()
                trace.get_current_span().add_event("request.retry", {"attempt": attempt + 1, "failed": str(exc)})
                log.warning("retrying %s after %s", prompt.request_id, failure.describe())

    async def _attempt(
        self,
        prompt: Prompt,
        sampling: common_pb2.SamplingParams,
        timeout: float,
        arrival: float,
        ids: list[int],
        epoch: int,
    ) -> AsyncIterator[router_pb2.GenerateResponse]:
        """One try: register with the decode worker, prefill (which streams the state to it), relay tokens.
        Failures come out as `AttemptFailed`; both calls are cancelled on the way out, so the workers drop
        whatever the attempt left."""
        with tracer().start_as_current_span("route"):
            routed = await self._decide(prompt)
        decision, decoder, prefill_addr = routed.decision, routed.decoder, routed.prefill
        cluster = self.clusters[decision.route]
        self.control.started(decision.route)
        prefilled = False
        decode_call = self.decode[decoder].Decode(
            decode_pb2.DecodeRequest(
                request_id=prompt.request_id, tenant_id=prompt.tenant_id, token_ids=prompt.token_ids, sampling=sampling
            ),
            timeout=timeout,
        )
        marks = {"sent": time.perf_counter()}
        call = cluster.prefill[prefill_addr].Prefill(
            prefill_pb2.PrefillRequest(
                request_id=prompt.request_id,
                tenant_id=prompt.tenant_id,
                token_ids=prompt.token_ids,
                sampling=sampling,
                decode_address=decoder,
                epoch=epoch,
            ),
            timeout=timeout,
        )
        liveness_s = self.settings.liveness_timeout_s
        prefill_gone = self.health.unresponsive(prefill_addr, liveness_s)
        prefill = asyncio.ensure_future(while_alive(call, prefill_gone, liveness_s))
        prefill.add_done_callback(lambda _: marks.setdefault("prefilled", time.perf_counter()))
        try:
            fresh = not ids  # the client has no token yet: this attempt sends the route info
            first_at = time.perf_counter()
            decoder_gone = self.health.unresponsive(decoder, liveness_s)
            stall_s = self.settings.token_stall_timeout_s
            async for resp in race(decode_call, prefill, decoder, prefill_addr, decoder_gone, liveness_s, stall_s):
                route = None
                if not prefilled:
                    done = await self._prefilled(prefill, prefill_addr)
                    prefilled = True
                    self.control.prefilled(decision.route, done.kv_bytes, done.transfer_s, done.tail_s, done.prefill_s)
                    first_at = time.perf_counter()
                    if fresh:
                        route = route_info(routed, done, first_at - arrival)
                        breakdown(route, done, arrival, marks["sent"], marks.get("prefilled", first_at), first_at)
                        observe_prefill(decision.route, decision.reason, route, done)
                text = self._delta(ids, list(resp.token_ids))
                yield router_pb2.GenerateResponse(
                    token_ids=resp.token_ids, text=text, finish_reason=resp.finish_reason, route=route
                )
            self.control.output_tokens.append(len(ids))
            if len(ids) > 1:
                metrics.TPOT_SECONDS.labels(decision.route).observe((time.perf_counter() - first_at) / (len(ids) - 1))
            metrics.LINK_UTILIZATION.set(self.control.egress.utilization())
            metrics.LINK_CAPACITY.set(self.control.egress.capacity_gbps())
            metrics.ROUTING_THRESHOLD.set(self.control.policy.threshold_tokens)
        finally:
            if not prefilled:
                self.control.prefilled(decision.route, 0, 0.0)
            decode_call.cancel()
            prefill.cancel()

    @staticmethod
    async def _prefilled(
        prefill: asyncio.Future[prefill_pb2.PrefillResponse], address: str
    ) -> prefill_pb2.PrefillResponse:
        try:
            return await prefill
        except grpc.aio.AioRpcError as exc:
            raise AttemptFailed.of(PREFILL_STAGE, address, exc) from exc

    def _delta(self, ids: list[int], new: list[int]) -> str:
        if self.tokenizer is None:
            ids.extend(new)
            return ""
        before = self.tokenizer.decode(ids)
        ids.extend(new)
        return self.tokenizer.decode(ids)[len(before) :]


def _retry_after_ms(exc: grpc.aio.AioRpcError, default_ms: int) -> int:
    hint = dict(exc.trailing_metadata() or ()).get(RETRY_AFTER_KEY)
    return int(hint) if isinstance(hint, str) and hint.isdigit() else default_ms


async def build_server(settings: RouterSettings) -> tuple[RunningServer, Callable[[], Awaitable[None]]]:
    servicer = RouterServicer(settings)
    servicer.control.start()
    servicer.health.start()
    name = router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name
    auth = [BearerTokenInterceptor(settings.auth_token, [name])] if settings.auth_token else []
    running = await start_server(
        settings.host,
        settings.port,
        [lambda s: router_pb2_grpc.add_RouterServiceServicer_to_server(servicer, s)],
        [name],
        tls=servicer.tls,
        interceptors=auth,
    )

    running.servicer = servicer

    async def cleanup() -> None:
        await servicer.health.stop()
        await servicer.control.stop()

    return running, cleanup
