"""Router: admits a client's request, lets the dispatcher route it (`dispatch.py`), starts the attempt's
decode registration and prefill (`attempt.py`), relays the decode worker's tokens, and retries an attempt
whose worker failed (`retry.py`)."""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING

import grpc
from opentelemetry import trace

from prfaas.sched.policy import Split
from prfaas.sched.routing import PD, PRFAAS
from prfaas.service.auth import BearerTokenInterceptor
from prfaas.service.grpc_server import RunningServer, StartupError, channel, start_server
from prfaas.service.status import RETRY_AFTER_KEY, abort, shed
from prfaas.state.table import SourceTable
from prfaas.telemetry import metrics
from prfaas.telemetry.tracing import tracer
from prfaas.v1 import (
    cachepool_pb2_grpc,
    common_pb2,
    decode_pb2_grpc,
    prefill_pb2_grpc,
    router_pb2,
    router_pb2_grpc,
    state_pb2,
)
from services.router.attempt import AttemptCalls, Watch
from services.router.cluster import Cluster
from services.router.control import RouterControl
from services.router.dispatch import Dispatcher
from services.router.health import Health
from services.router.prompt import BadRequest, Prompt, PromptReader
from services.router.report import breakdown, observe_prefill, route_info
from services.router.retry import AttemptFailed, attempt_id, resumed, should_retry
from services.router.roles import DECODE_ROLE, PREFILL_ROLE, RoleTable
from services.router.settings import RouterSettings, split_addresses
from services.router.watch import StateWatcher
from services.router.worker_check import check_workers

if TYPE_CHECKING:
    from services.router.http_api import OpenAiApi

log = logging.getLogger(__name__)
Watchable = (
    decode_pb2_grpc.DecodeServiceStub | prefill_pb2_grpc.PrefillServiceStub | cachepool_pb2_grpc.CachePoolServiceStub
)


class RouterError(Exception):
    """A request the router cannot serve: the status its client gets (`code`), the message, and on overload
    (RESOURCE_EXHAUSTED) how long to wait before retrying."""

    def __init__(self, code: grpc.StatusCode, message: str, retry_after_ms: int | None = None) -> None:
        super().__init__(message)
        self.code, self.retry_after_ms = code, retry_after_ms


class RouterServicer(router_pb2_grpc.RouterServiceServicer):
    http_port: int | None = None  # where the OpenAI HTTP API listens (None: not served)

    def __init__(self, settings: RouterSettings) -> None:
        self.settings = settings
        self.prompts = PromptReader(settings.model, settings.max_model_len)
        dual, pd_prefill = split_addresses(settings.pd_workers), split_addresses(settings.pd_prefill)
        decoders = split_addresses(settings.decode)
        self.roles = RoleTable(pd_prefill, decoders, dual, settings.pd_prefill_workers)
        self.tls = settings.tls
        self.health = Health(settings.health_interval_s, self.tls)
        self.table = SourceTable()  # what the workers and pools publish
        self.watcher = StateWatcher(self.table, self.health, settings.health_interval_s, settings.state_silence_s)
        prfaas = self._cluster(PRFAAS, split_addresses(settings.prfaas_prefill), settings.prfaas_pool, None)
        pd = self._cluster(PD, [*pd_prefill, *dual], settings.pd_pool, self._pd_prefill)
        self.clusters = {PRFAAS: prfaas, PD: pd}
        self.decode = {a: decode_pb2_grpc.DecodeServiceStub(channel(a, self.tls)) for a in [*decoders, *dual]}
        self.inflight = 0  # Generate calls admitted and not finished (bounded by max_inflight_requests)
        self.control = RouterControl(settings, len(prfaas.prefill), self.roles.split, self.rebalance)
        self.dispatch = Dispatcher(settings, self.control, self.clusters, self.table, self.health, self.roles)
        self.control.collect = self.dispatch.collect_samples
        self._watch = Watch(self.health, settings.liveness_timeout_s, settings.token_stall_timeout_s)

    def _cluster(
        self, name: str, prefill: Sequence[str], pool: str, members: Callable[[], Sequence[str]] | None
    ) -> Cluster:
        return Cluster(name, prefill, pool, members, self.tls, self.settings.prefix_copy_timeout_s)

    def _pd_prefill(self) -> list[str]:
        return self.roles.members(PREFILL_ROLE)

    def follow_sources(self) -> None:
        """Subscribe to every worker's and pool's state stream (`watch.py`); a PD worker's one stream
        serves both its roles."""
        sources: dict[str, Watchable] = dict(self.decode)
        for cluster in self.clusters.values():
            sources = {**cluster.prefill, **sources}
            if cluster.pool is not None:
                sources[cluster.pool_address] = cluster.pool
        for address, stub in sources.items():
            self.watcher.follow(address, partial(stub.Watch, state_pb2.WatchRequest()))

    async def rebalance(self, target: Split) -> int:
        """Convert dual-role PD workers toward `target` (drain, then switch); a worker's old-role work in
        flight is what its load reports and this router's own counts say (`SourceTable.busy`)."""

        async def in_flight(addr: str) -> int:
            return self.table.busy.get(addr, 0)

        probes = {PREFILL_ROLE: in_flight, DECODE_ROLE: in_flight}
        return await self.roles.rebalance(target, probes, self.settings.drain_timeout_s)

    async def Generate(
        self, request: router_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[router_pb2.GenerateResponse]:
        try:
            async with contextlib.aclosing(self.generate(request, context.time_remaining())) as responses:
                async for msg in responses:
                    yield msg
        except RouterError as exc:
            if exc.retry_after_ms is not None:
                await shed(context, str(exc), exc.retry_after_ms)
            await abort(context, exc.code, str(exc))

    async def generate(
        self, request: router_pb2.GenerateRequest, time_remaining_s: float | None = None
    ) -> AsyncGenerator[router_pb2.GenerateResponse, None]:
        """Serve one request, whichever front it came through: admission (`max_inflight_requests`),
        validation, attempts. What it cannot serve comes out as `RouterError`."""
        arrival = time.perf_counter()
        if self.inflight >= self.settings.max_inflight_requests:
            busy = f"router has {self.inflight} requests in flight (max_inflight_requests): retry later"
            raise RouterError(grpc.StatusCode.RESOURCE_EXHAUSTED, busy, self.settings.retry_after_ms)
        self.inflight += 1
        try:
            try:
                prompt = self.prompts.read(request)
            except BadRequest as exc:
                raise RouterError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc
            timeout = self._timeout(request, time_remaining_s)
            async for msg in self._served(prompt, request.sampling, timeout, arrival):
                yield msg
        finally:
            self.inflight -= 1

    async def _served(
        self, prompt: Prompt, sampling: common_pb2.SamplingParams, timeout: float, arrival: float
    ) -> AsyncIterator[router_pb2.GenerateResponse]:
        """`_serve`, with a worker's final status (and its retry hint) as a `RouterError`."""
        try:
            async for msg in self._serve(prompt, sampling, timeout, arrival):
                yield msg
        except grpc.aio.AioRpcError as exc:
            log.warning("request %s failed: %s: %s", prompt.request_id, exc.code().name, exc.details())
            overloaded = exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # a worker's queue is full: pass its hint on
            hint = _retry_after_ms(exc, self.settings.retry_after_ms) if overloaded else None
            raise RouterError(exc.code(), exc.details() or exc.code().name, hint) from exc

    def _timeout(self, request: router_pb2.GenerateRequest, time_remaining_s: float | None) -> float:
        limits = [self.settings.request_timeout_s]
        if request.timeout_ms:
            limits.append(request.timeout_ms / 1000)
        if time_remaining_s is not None:
            limits.append(time_remaining_s)
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
        """One try: route, start both calls, relay the tokens (the first with the route info when the
        client has none yet). Failures come out as `AttemptFailed`; both calls are cancelled on the way out."""
        with tracer().start_as_current_span("route"):
            routed = await self.dispatch.decide(prompt)
        route = routed.decision.route
        self.control.started(route)
        stubs = (self.decode[routed.decoder], self.clusters[route].prefill[routed.prefill])
        calls = AttemptCalls.start(routed, prompt, sampling, stubs, timeout, epoch, self._watch)
        fresh = not ids  # the client has no token yet: this attempt sends the route info
        try:
            async for resp in calls.responses():
                info = await self._first_token(calls, arrival, fresh) if calls.done is None else None
                text = self.prompts.delta(ids, list(resp.token_ids))
                yield router_pb2.GenerateResponse(
                    token_ids=resp.token_ids, text=text, finish_reason=resp.finish_reason, route=info
                )
            self._finished(route, len(ids), calls.first_s)
        finally:
            if calls.done is None:
                self.control.prefilled(route, 0, 0.0)
                self.table.finished(routed.prefill)
            self.table.finished(routed.decoder)
            calls.cancel()

    async def _first_token(self, calls: AttemptCalls, arrival: float, fresh: bool) -> router_pb2.RouteInfo | None:
        """The prefill's answer feeds the controller; a fresh request's first token carries the route info."""
        done = await calls.prefilled()
        self.table.finished(calls.routed.prefill)
        decision = calls.routed.decision
        self.control.prefilled(decision.route, done.kv_bytes, done.transfer_s, done.tail_s, done.prefill_s)
        if not fresh:
            return None
        info = route_info(calls.routed, done, calls.first_s - arrival)
        breakdown(info, done, arrival, calls.sent_s, calls.prefilled_s or calls.first_s, calls.first_s)
        observe_prefill(decision.route, decision.reason, info, done)
        return info

    def _finished(self, route: str, num_tokens: int, first_s: float) -> None:
        self.control.output_tokens.append(num_tokens)
        if num_tokens > 1:
            metrics.TPOT_SECONDS.labels(route).observe((time.perf_counter() - first_s) / (num_tokens - 1))
        metrics.LINK_UTILIZATION.set(self.control.egress.utilization())
        metrics.LINK_CAPACITY.set(self.control.egress.capacity_gbps())
        metrics.ROUTING_THRESHOLD.set(self.control.policy.threshold_tokens)


def _retry_after_ms(exc: grpc.aio.AioRpcError, default_ms: int) -> int:
    hint = dict(exc.trailing_metadata() or ()).get(RETRY_AFTER_KEY)
    return int(hint) if isinstance(hint, str) and hint.isdigit() else default_ms


async def build_server(settings: RouterSettings) -> tuple[RunningServer, Callable[[], Awaitable[None]]]:
    """Check that the workers agree with the router (`worker_check`), then start routing."""
    prefill = [*split_addresses(settings.prfaas_prefill), *split_addresses(settings.pd_prefill)]
    decode = [*split_addresses(settings.decode), *split_addresses(settings.pd_workers)]
    await check_workers(prefill, decode, settings.block_size, settings.tls, settings.probe_timeout_s)
    servicer = RouterServicer(settings)
    servicer.follow_sources()
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
    http = await _start_http(servicer, running)

    async def cleanup() -> None:
        if http is not None:
            await http.stop()
        await servicer.watcher.stop()
        await servicer.health.stop()
        await servicer.control.stop()

    return running, cleanup


async def _start_http(servicer: RouterServicer, running: RunningServer) -> OpenAiApi | None:
    """The OpenAI HTTP API next to the gRPC port, when `http_port` is set; a port it cannot bind stops both."""
    from services.router.http_api import OpenAiApi  # it imports this module

    port = servicer.settings.http_port
    if port is None:
        return None
    api = OpenAiApi(servicer)
    try:
        servicer.http_port = await api.start(port)
    except OSError as exc:
        await running.stop(0)
        raise StartupError(f"--http-port {port}: cannot serve the OpenAI API there ({exc})") from exc
    print(f"openai api on port {servicer.http_port}", flush=True)
    return api
